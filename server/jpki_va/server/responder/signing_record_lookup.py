"""Signing records served from the live index under the rule of law/signing_record.py.

The index holds a holder's signing records only while some verifier has the
holder's consent (the snapshot carries nothing else), and the consent per verifier.
"""

from __future__ import annotations

from jpki_va.core.clock import Clock
from jpki_va.core.domain import CertKind, Provision, Verifier, serial_hex
from jpki_va.server.law.signing_record import FIELDS, NotDisclosable, check_disclosable, check_kind
from jpki_va.server.ledger.provisions import Disclosure
from jpki_va.server.responder.mappings import UnknownCertificate
from jpki_va.server.responder.status import IndexHolder, StatusSource
from jpki_va.server.snapshot.data_files import SigningRecord


class SigningRecords:
    def __init__(self, holder: IndexHolder, source: StatusSource, clock: Clock) -> None:
        self._holder = holder
        self._source = source
        self._clock = clock

    def get(self, verifier: Verifier, kind: CertKind, serial: int) -> tuple[SigningRecord, int]:
        """The record and the index sequence it was read from; refuses as the law says."""
        check_kind(kind)
        index = self._holder.get()
        answer = self._source.status(kind, serial, self._clock.now())
        if answer.record is None:
            raise UnknownCertificate(f"{kind.name} serial {serial:X} is not known")
        check_disclosable(kind, answer.status, index.consent(kind, serial, verifier.id))
        record = index.signing_record(kind, serial)
        if record is None:  # consent without a record: the snapshot says it cannot be
            raise NotDisclosable(f"no signing record of {kind.name} serial {serial:X}")
        return record, answer.sequence

    def disclosure(self, verifier: Verifier, record: SigningRecord) -> Disclosure:
        """What the audit trail keeps (証跡): who got whose record when; not the values."""
        return Disclosure(
            self._clock.now(),
            verifier.id,
            Provision.SIGNING_RECORD,
            f"{record.kind.name}:{serial_hex(record.serial)}",
            "fields: serial," + ",".join(FIELDS),
        )
