"""Configuration objects: key types, PIN sources and the HSM connection config."""

from __future__ import annotations

import enum
import getpass
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jpki_va.hsm._errors import HsmConfigError

#: Module path of the SoftHSM2 build shipped by Debian/Ubuntu (the embedded default).
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

# PKCS#11 CK_TOKEN_INFO.label is a fixed 32-byte, blank-padded field.
_MAX_LABEL_BYTES = 32


class KeyType(enum.Enum):
    """Key algorithms the layer can generate and sign with."""

    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    EC_P256 = "ec-p256"


@dataclass(frozen=True, repr=False)
class PinSource:
    """Where a PIN comes from: an environment variable, a file's first line, or a prompt.

    Never argv. The PIN is only ever returned by :meth:`read`. An env or file PIN is
    read again on every call (so a reconnect sees a rotated PIN); a prompted PIN is
    asked once and kept in this object's memory, because a reconnect in the middle of
    a ceremony must not stop to ask the operator again.
    """

    env: str | None = None
    file: str | None = None
    prompt: str | None = None
    _prompted: list[str] = field(default_factory=list, compare=False, init=False)

    def __post_init__(self) -> None:
        given = [x for x in (self.env, self.file, self.prompt) if x is not None]
        if len(given) != 1:
            raise HsmConfigError("PinSource needs exactly one of env=, file= or prompt=")
        if self.env is not None and not self.env:
            raise HsmConfigError("PinSource env= must name an environment variable")
        if self.file is not None and not self.file:
            raise HsmConfigError("PinSource file= must be a path")
        if self.prompt is not None and not self.prompt:
            raise HsmConfigError("PinSource prompt= must be the text to show")

    def describe(self) -> str:
        """Human-readable description of the source (never the PIN)."""
        if self.env is not None:
            return f"env:{self.env}"
        if self.file is not None:
            return f"file:{self.file}"
        return "prompt"

    def __repr__(self) -> str:
        return f"PinSource({self.describe()})"

    def _ask(self) -> str:
        if not self._prompted:
            if not sys.stdin.isatty():
                raise HsmConfigError(
                    "no PIN given: set a PIN environment variable or file (stdin is not a "
                    "terminal to prompt on)"
                )
            assert self.prompt is not None
            self._prompted.append(getpass.getpass(self.prompt))
        return self._prompted[0]

    def read(self) -> str:
        """Return the PIN; raise HsmConfigError if the source is unset, missing or empty."""
        pin: str | None
        if self.prompt is not None:
            pin = self._ask()
        elif self.env is not None:
            pin = os.environ.get(self.env)
            if pin is None:
                raise HsmConfigError(f"PIN environment variable {self.env} is not set")
        else:
            assert self.file is not None
            try:
                with Path(self.file).open(encoding="utf-8") as fh:
                    pin = fh.readline()
            except FileNotFoundError:
                raise HsmConfigError(f"PIN file {self.file} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                # `from None` and only the class name: a decode error message would
                # quote bytes of the PIN.
                raise HsmConfigError(
                    f"PIN file {self.file} is unreadable ({type(exc).__name__})"
                ) from None
        pin = pin.rstrip("\r\n")
        if not pin:
            raise HsmConfigError(f"PIN from {self.describe()} is empty")
        return pin


@dataclass(frozen=True, kw_only=True)
class HsmConfig:
    """How to reach the signing token."""

    module: str = DEFAULT_MODULE
    token_label: str
    pin: PinSource
    #: If set, exported as SOFTHSM2_CONF before the module is initialised.
    softhsm2_conf: str | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.token_label or not self.token_label.strip():
            raise HsmConfigError("token_label must not be empty")
        if len(self.token_label.encode("utf-8")) > _MAX_LABEL_BYTES:
            raise HsmConfigError(f"token_label is longer than {_MAX_LABEL_BYTES} bytes")
        if not isinstance(self.pin, PinSource):
            raise HsmConfigError("pin must be a PinSource")
        if not Path(self.module).is_file():
            raise HsmConfigError(f"PKCS#11 module {self.module} does not exist")
        if self.softhsm2_conf is not None and not Path(self.softhsm2_conf).is_file():
            raise HsmConfigError(f"SoftHSM2 config {self.softhsm2_conf} does not exist")
