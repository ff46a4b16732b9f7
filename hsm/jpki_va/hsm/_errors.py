"""Exception hierarchy of the HSM layer (one class per failure)."""

from __future__ import annotations


class HsmError(Exception):
    """Base class of every error raised by :mod:`hsm`."""


class HsmConfigError(HsmError):
    """The HSM configuration (module, label, PIN source, SoftHSM2 conf) is unusable."""


class TokenNotFound(HsmError):
    """No token with the configured label is present."""


class TokenUnavailable(HsmError):
    """The token cannot be used now: removed, its store gone, the module failing.

    The :class:`Hsm` re-opens the session by itself (with a growing pause between
    attempts), so a later call may succeed; the message starts "HSM unavailable: ".
    """


class LoginFailed(HsmError):
    """The token refused the user login (wrong PIN, locked PIN, ...)."""


class KeyNotFound(HsmError):
    """No private key with the requested label exists on the token."""


class KeyExists(HsmError):
    """A private key with the requested label already exists on the token."""


class UnsupportedAlgorithm(HsmError):
    """The key cannot perform the requested algorithm/padding/operation."""


class SigningFailed(HsmError):
    """The token failed to sign.

    ``ckr`` is the python-pkcs11 exception class name (a stand-in for the CKR_* code),
    kept as a low-cardinality label for metrics.
    """

    def __init__(self, message: str, *, ckr: str) -> None:
        super().__init__(message)
        self.ckr = ckr


class KeyExportRefused(HsmError):
    """Private key material never leaves the token."""
