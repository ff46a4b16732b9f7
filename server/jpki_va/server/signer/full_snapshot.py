"""What a full snapshot carries, streamed out of one registry read transaction.

A full snapshot walks every issuance record, so nothing here grows with the number
of certificates except compact per-loss data (CRL entries, packed per scope):
records go to the builder as the registry is walked in key order, links are
computed holder by holder and sorted by `ExternalSort`, loss events are filtered by
looking their certificate up, and signing records come from consenting holders only.

Without issuer compromises the walk reads each value's fixed header only (no
datetimes, no dataclasses); with them, every record goes through the registry's
`_effective` rule, exactly as a single certificate look-up does.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from jpki_va.core.domain import (
    KIND_BY_VALUE,
    CertKind,
    CrlReason,
    Link,
    LinkType,
    LossCause,
    from_micros,
    micros,
    parse_record_key,
    record_key,
)
from jpki_va.server.law.consent_scope import covers
from jpki_va.server.law.correspondence import LinkSubject, holder_links
from jpki_va.server.law.retention import RetentionPolicy, loss_kept
from jpki_va.server.model.registry_values import Consent, IssuerRecord, LossEvent, Scope
from jpki_va.server.pki.crl_profile import CrlEntry
from jpki_va.server.registry.codec import CertificateHead, LinkHead, link_head_of
from jpki_va.server.registry.transactions import RegistryTxn
from jpki_va.server.signer.external_sort import ExternalSort
from jpki_va.server.snapshot.data_files import (
    LINK_ROW_SIZE,
    consent_line,
    link_rows,
    signing_record_line,
)
from jpki_va.server.snapshot.record_format import pack_file_record, partition_number

_ENTRY = struct.Struct("<20sqBB")  # serial, loss time (µs), cause, reason


def _seconds(micro: int) -> int:
    """What int(datetime.timestamp()) gives for the same instant (the same arithmetic)."""
    return int(micro / 10**6)


class FullContent:
    """One full snapshot's content; each part is read once, inside `tx`.

    `records()` must run first: it collects the CRL entries `crl_entries()` returns.
    """

    def __init__(
        self,
        tx: RegistryTxn,
        issuers: list[IssuerRecord],
        retention: RetentionPolicy,
        now: datetime,
        *,
        scratch: Path | None = None,
        link_run_rows: int = 1 << 20,
    ) -> None:
        self._tx = tx
        self._ordinals = {r.key_id: i for i, r in enumerate(issuers)}
        self._compromises = tx.compromises()
        self._retention = retention
        self._now_dt = now
        self._now = micros(now)
        # Cut-offs per kind (issuance) and per kind and cause (loss), by wire value.
        self._issued_after = {int(k): micros(retention.issuance_cutoff(k, now)) for k in CertKind}
        self._lost_after = {
            (int(k), int(c)): micros(retention.loss_cutoff(k, c, now))
            for k in CertKind
            for c in LossCause
        }
        self._scratch = scratch
        self._link_run_rows = link_run_rows
        self._partitions: dict[bytes, int] = {}
        self._entries: dict[tuple[int, bytes, bytes], bytearray] = {}
        self.link_runs = 0  # how many sorted runs the links needed (memory bound check)

    # one record -------------------------------------------------------------------------
    def _heads(self) -> Iterator[tuple[bytes, CertificateHead]]:
        """Every record with its effective loss, in key order."""
        if not self._compromises:
            return self._tx.certificate_heads()
        return ((record.key, CertificateHead.of(record)) for record in self._tx.certificates())

    def _head(self, key: bytes) -> CertificateHead | None:
        """One record with its effective loss."""
        if not self._compromises:
            return self._tx.certificate_head(key)
        record = self._tx.certificate(*parse_record_key(key))
        return None if record is None else CertificateHead.of(record)

    def _holder_link_heads(self) -> Iterator[list[LinkHead]]:
        """Per holder, what the links need of each record, with its effective loss."""
        if not self._compromises:
            return self._tx.holder_link_heads()
        return (
            [link_head_of(head) for head in map(self._head, keys) if head is not None]
            for _, keys in self._tx.holders()
        )

    def _retained(self, head: CertificateHead) -> bool:
        return head.not_before > self._issued_after[head.kind]

    def _retained_key(self, key: bytes) -> bool:
        head = self._head(key)
        return head is not None and self._retained(head)

    def _loss_kept(self, head: CertificateHead) -> bool:
        return head.cause != 0 and loss_kept(
            head.loss_time, head.not_after, self._now, self._lost_after[head.kind, head.cause]
        )

    # files ------------------------------------------------------------------------------
    def records(self) -> Iterator[bytes]:
        """The records file's rows in key order; collects the CRL entries on the way."""
        # The per-record loop of a national-scale publish: locals, no calls it can avoid.
        ordinals, compromised, entries = self._ordinals, self._compromises, self._entries
        partitions, pack_entry = self._partitions, _ENTRY.pack
        issued_after, lost_after, now = self._issued_after, self._lost_after, self._now
        for key, head in self._heads():
            kind, _, kid, partition, nb, na, lost, cause, reason, _ = head
            if nb <= issued_after[kind]:
                continue  # past the issuance record's retention
            number = partitions.get(partition)
            if number is None:
                number = partitions[partition] = partition_number(partition.decode())
            yield pack_file_record(key, _seconds(nb), _seconds(na), number, ordinals[kid])
            if kid in compromised:
                continue  # that key signs nothing more; the compromise answers for it
            scope = (kind, kid, partition)
            bucket = entries.get(scope)
            if bucket is None:
                bucket = entries[scope] = bytearray()  # a CRL even when empty
            if cause and loss_kept(lost, na, now, lost_after[kind, cause]):
                bucket += pack_entry(key[1:], lost, cause, reason)

    def crl_entries(self) -> dict[Scope, Iterable[CrlEntry]]:
        """Per partition CRL, its entries in serial order (after `records()`)."""
        return {
            (KIND_BY_VALUE[kind], kid, partition.decode()): _crl_entries(bucket)
            for (kind, kid, partition), bucket in self._entries.items()
        }

    def events(self) -> Iterator[LossEvent]:
        """Loss events in registry order, of the losses the snapshot still carries."""
        for event in self._tx.events_since(0):
            head = self._head(record_key(event.kind, event.serial))
            if head is not None and self._retained(head) and self._loss_kept(head):
                yield event

    def link_rows(self) -> Iterator[bytes]:
        """Rows of every correspondence between retained records, and every renewal."""
        rows = ExternalSort(LINK_ROW_SIZE, run_rows=self._link_run_rows, directory=self._scratch)
        issued_after, add, kinds = self._issued_after, rows.add, KIND_BY_VALUE
        for heads in self._holder_link_heads():
            subjects = [
                LinkSubject(kinds[kind], serial, nb, na, lost, card)
                for kind, serial, nb, na, lost, card in heads
                if nb > issued_after[kind]  # else past the issuance record's retention
            ]
            for link in holder_links(subjects):
                add(link_rows(link))
        for old, new in self._tx.renewals():
            if self._retained_key(record_key(*old)) and self._retained_key(record_key(*new)):
                rows.add(link_rows(Link(LinkType.RENEWAL, *old, *new)))
        yield from rows.sorted_rows()
        self.link_runs = rows.runs

    def signing_records_and_consents(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Signing records (by serial) and consent lines (by record) of consenting holders."""
        consenting: dict[str, list[Consent]] = defaultdict(list)
        for consent in self._tx.consents():
            if consent.in_effect:
                consenting[consent.resident_code].append(consent)
        chosen = []
        for code, given in consenting.items():
            for record in self._tx.holder_certificates(code):
                # Only the certificates each consent covers (第18条第3項).
                verifiers = [c.verifier for c in given if covers(c, record)]
                if verifiers and self._retention.issuance_retained(
                    record.kind, record.not_before, self._now_dt
                ):
                    chosen.append((record.key, record, verifiers))
        chosen.sort(key=lambda item: item[0])
        signing: dict[int, dict[str, Any]] = {}
        consents: list[dict[str, Any]] = []
        for _, record, verifiers in chosen:
            signing[record.serial] = signing_record_line(record)
            consents.extend(consent_line(record, verifier, True) for verifier in verifiers)
        return [signing[serial] for serial in sorted(signing)], consents


def _crl_entries(bucket: bytearray) -> Iterator[CrlEntry]:
    for serial, lost, cause, reason in _ENTRY.iter_unpack(bucket):
        yield CrlEntry(
            int.from_bytes(serial, "big"), from_micros(lost), LossCause(cause), CrlReason(reason)
        )
