"""What a holder's consent to signing records covers (第18条第3項).

The law gives the signing record "with the holder's consent"; it does not say to
which certificates a consent extends. We take the narrow reading: a consent covers
the holder's signing certificates (CARD_SIGN, MOBILE_SIGN) in effect when it is
given, by serial. A certificate issued later (a renewal, a new smartphone) is not
covered unless the holder consents again, or consented explicitly "and successors",
which covers every signing certificate of the holder, later ones included.

A consent recorded before scopes existed carries no serials; it is read as "and
successors", which is what it meant then.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from jpki_va.core.domain import CertKind, Status
from jpki_va.server.law.errors import Refused
from jpki_va.server.model.registry_values import CertificateRecord, Consent

Key = tuple[CertKind, int]


def scope_at_grant(records: Iterable[CertificateRecord], now: datetime) -> tuple[Key, ...]:
    """The signing certificates a consent given now covers; refused when there are none."""
    covered = tuple(
        sorted(
            (r.kind, r.serial)
            for r in records
            if r.kind.is_signing and r.status_record().status_at(now) is Status.GOOD
        )
    )
    if not covered:
        raise Refused(
            "the holder has no signing certificate in effect: a consent to signing records "
            "(第18条第3項) would cover nothing"
        )
    return covered


def covers(consent: Consent, record: CertificateRecord) -> bool:
    """Whether `consent` (in effect) lets its verifier receive `record`'s signing record."""
    if not consent.in_effect or not record.kind.is_signing:
        return False
    return consent.successors or (record.kind, record.serial) in consent.covers
