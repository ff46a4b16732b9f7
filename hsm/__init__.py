"""HSM layer: signing keys kept in a PKCS#11 token, usable as ``cryptography`` keys."""

from hsm._config import DEFAULT_MODULE, HsmConfig, KeyType, PinSource
from hsm._errors import (
    HsmConfigError,
    HsmError,
    KeyExists,
    KeyExportRefused,
    KeyNotFound,
    LoginFailed,
    SigningFailed,
    TokenNotFound,
    UnsupportedAlgorithm,
)
from hsm._inventory import REQUIRED_MECHANISMS, ModuleInfo, SlotSummary, TokenSummary, module_info
from hsm._keys import HsmEcPrivateKey, HsmPrivateKey, HsmRsaPrivateKey
from hsm._observer import HsmObserver, NullObserver
from hsm._softhsm import init_softhsm_token
from hsm._token import Hsm, KeyInfo, TokenInfo

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
    "UnsupportedAlgorithm",
    "init_softhsm_token",
    "module_info",
]
