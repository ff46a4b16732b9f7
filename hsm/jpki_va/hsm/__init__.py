"""HSM layer: signing keys kept in a PKCS#11 token, usable as ``cryptography`` keys.

The public names load on first use (PEP 562): the token code pulls in python-pkcs11
and the module's C library, which a command that only parses its options, or uses
just the configuration types, must not pay for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jpki_va.hsm._config import DEFAULT_MODULE, HsmConfig, KeyType, PinSource
    from jpki_va.hsm._errors import (
        HsmConfigError,
        HsmError,
        KeyExists,
        KeyExportRefused,
        KeyNotFound,
        LoginFailed,
        SigningFailed,
        TokenNotFound,
        TokenUnavailable,
        UnsupportedAlgorithm,
    )
    from jpki_va.hsm._inventory import (
        REQUIRED_MECHANISMS,
        ModuleInfo,
        SlotSummary,
        TokenSummary,
        module_info,
    )
    from jpki_va.hsm._keys import HsmEcPrivateKey, HsmPrivateKey, HsmRsaPrivateKey
    from jpki_va.hsm._observer import HsmObserver, NullObserver
    from jpki_va.hsm._softhsm import init_softhsm_token
    from jpki_va.hsm._token import Hsm, KeyInfo, TokenInfo

_MODULE_OF = {
    "DEFAULT_MODULE": "_config",
    "HsmConfig": "_config",
    "KeyType": "_config",
    "PinSource": "_config",
    "HsmConfigError": "_errors",
    "HsmError": "_errors",
    "KeyExists": "_errors",
    "KeyExportRefused": "_errors",
    "KeyNotFound": "_errors",
    "LoginFailed": "_errors",
    "SigningFailed": "_errors",
    "TokenNotFound": "_errors",
    "TokenUnavailable": "_errors",
    "UnsupportedAlgorithm": "_errors",
    "REQUIRED_MECHANISMS": "_inventory",
    "ModuleInfo": "_inventory",
    "SlotSummary": "_inventory",
    "TokenSummary": "_inventory",
    "module_info": "_inventory",
    "HsmEcPrivateKey": "_keys",
    "HsmPrivateKey": "_keys",
    "HsmRsaPrivateKey": "_keys",
    "HsmObserver": "_observer",
    "NullObserver": "_observer",
    "init_softhsm_token": "_softhsm",
    "Hsm": "_token",
    "KeyInfo": "_token",
    "TokenInfo": "_token",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_MODULE",
    "REQUIRED_MECHANISMS",
    "Hsm",
    "HsmConfig",
    "HsmConfigError",
    "HsmEcPrivateKey",
    "HsmError",
    "HsmObserver",
    "HsmPrivateKey",
    "HsmRsaPrivateKey",
    "KeyExists",
    "KeyExportRefused",
    "KeyInfo",
    "KeyNotFound",
    "KeyType",
    "LoginFailed",
    "ModuleInfo",
    "NullObserver",
    "PinSource",
    "SigningFailed",
    "SlotSummary",
    "TokenInfo",
    "TokenNotFound",
    "TokenSummary",
    "TokenUnavailable",
    "UnsupportedAlgorithm",
    "init_softhsm_token",
    "module_info",
]
