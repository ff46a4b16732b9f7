"""What the law's rules need of a registry write transaction, and nothing more.

The rules run inside the registry's transaction but must not import the registry
(which imports them): they take this Protocol, which the registry's transaction
satisfies structurally.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from jpki_va.core.domain import CertKind, Loss
from jpki_va.server.model.registry_values import (
    CertificateRecord,
    HolderNotice,
    LossEvent,
    LossTrigger,
)


class RegistryPort(Protocol):
    """The reads and writes a rule of the law makes within one registry transaction."""

    def certificate(self, kind: CertKind, serial: int) -> CertificateRecord | None:
        """The record as it stands now (issuer compromises applied), or None."""
        ...

    def holder_certificates(self, resident_code: str) -> list[CertificateRecord]:
        """Every certificate issued to the holder with this resident code."""
        ...

    def key_certificates(self, key_hash: bytes) -> list[CertificateRecord]:
        """Every certificate issued for the public key with this hash (model/public_key.py)."""
        ...

    def record_loss(
        self,
        kind: CertKind,
        serial: int,
        loss: Loss,
        *,
        recorded_at: datetime | None = None,
        trigger: LossTrigger | None = None,
    ) -> LossEvent:
        """Record a loss of effect (final: a second loss is refused) and its event."""
        ...

    def put_renewal(self, old: CertificateRecord, new: CertificateRecord) -> None:
        """Link a superseded certificate to its successor of the same kind."""
        ...

    def add_notice(self, notice: HolderNotice) -> HolderNotice:
        """Put a notice to a holder in the outbox (law/holder_notice.py)."""
        ...
