"""Hooks through which the HSM layer reports signing and faults (metrics live elsewhere).

The layer stays free of any metrics library: a composition root passes an object with
these methods (the signer's Prometheus metrics, for one) to :class:`hsm.Hsm`.
"""

from __future__ import annotations

from typing import Protocol


class HsmObserver(Protocol):
    def signed(self, label: str, mechanism: str, seconds: float) -> None:
        """One successful C_Sign with ``mechanism`` (``"SHA256_RSA_PKCS"``, ...)."""

    def failed(self, operation: str, ckr: str) -> None:
        """A PKCS#11 call failed with ``ckr`` (also when a reconnect then recovered it)."""

    def reconnected(self, token_label: str) -> None:
        """The shared session was rebuilt after a session, login or token failure."""


class NullObserver:
    """The default: reports go nowhere."""

    def signed(self, label: str, mechanism: str, seconds: float) -> None:
        pass

    def failed(self, operation: str, ckr: str) -> None:
        pass

    def reconnected(self, token_label: str) -> None:
        pass
