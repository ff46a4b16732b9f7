"""Status sources: one small interface, the index behind it, layers over it.

Every answer about one certificate goes through `StatusSource.status`; the gRPC
servicer and the OCSP responder only translate its answers. Layers (issuer
compromise, response caches) wrap a source and are sources themselves.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from jpki_va.core.domain import (
    CertKind,
    CrlReason,
    Loss,
    LossCause,
    Status,
    StatusRecord,
    from_micros,
    micros,
    parse_record_key,
    status_rule,
)
from jpki_va.server.law.issuer_compromise import Compromise, effective_loss
from jpki_va.server.model.verifiers import VerifierTable
from jpki_va.server.responder.index_reader import Index, IssuerEntry, current_index
from jpki_va.server.snapshot.record_format import partition_text, unpack_fields

log = logging.getLogger(__name__)


class NotReady(Exception):
    """No index is loaded yet: the worker cannot answer."""


class BadRequest(ValueError):
    """The request names no certificate we can look up (malformed or foreign)."""


@dataclass(frozen=True, slots=True)
class Answer:
    kind: CertKind | None  # None: a CertID of an issuer we do not answer for
    serial: int
    status: Status
    record: StatusRecord | None
    as_of: datetime
    sequence: int
    # Validity of the information: the thisUpdate/nextUpdate of the CRL it came from.
    this_update: datetime
    next_update: datetime

    @property
    def labels(self) -> tuple[str, str]:
        """(status, loss cause) for counting answers; names no certificate."""
        loss = self.record.loss if self.record is not None else None
        if self.status is Status.REVOKED and loss is not None:
            return "revoked", loss.cause.slug
        return self.status.name.lower(), "none"


def unknown_answer(index: Index, kind: CertKind | None, serial: int, as_of: datetime) -> Answer:
    """UNKNOWN (never GOOD) for a serial the index does not hold."""
    return Answer(
        kind, serial, Status.UNKNOWN, None, as_of, index.sequence, index.created_at,
        index.next_update,
    )  # fmt: skip


# (kind, serial, as_of): one certificate asked about, as `StatusSource.status` takes it
Target = tuple[CertKind, int, datetime]


class StatusSource(Protocol):
    def status(self, kind: CertKind, serial: int, as_of: datetime) -> Answer: ...


class PackedRecord(NamedTuple):
    """A StatusRecord as the index packs it; times in microseconds since the epoch."""

    not_before: int
    not_after: int
    partition: str
    issuer_key_id: bytes
    lost_at: int | None  # None: no loss
    cause: int  # LossCause, 0 without a loss
    reason: int  # CrlReason

    def status_at(self, when: int) -> Status:
        return status_rule(when, self.not_before, self.not_after, self.lost_at)

    def loss(self) -> Loss | None:
        if self.lost_at is None:
            return None
        return Loss(from_micros(self.lost_at), LossCause(self.cause), CrlReason(self.reason))


class Brief(NamedTuple):
    """An Answer without its CRL times, in the index's integers: what a CheckStream item
    carries, computed without a datetime per field. Times in microseconds since the epoch.
    A named tuple: a batch makes one per certificate, and a tuple is the cheapest to make."""

    kind: CertKind | None
    serial: int
    status: Status
    as_of: int
    sequence: int
    record: PackedRecord | None

    @property
    def labels(self) -> tuple[str, str]:
        """As `Answer.labels`."""
        record = self.record
        if self.status is Status.REVOKED and record is not None and record.lost_at is not None:
            return "revoked", _CAUSE_SLUGS[record.cause]
        return _STATUS_LABELS[self.status], "none"


_STATUS_LABELS = {status: status.name.lower() for status in Status}
_CAUSE_SLUGS = {int(cause): cause.slug for cause in LossCause}


def brief_of(answer: Answer) -> Brief:
    record = answer.record
    packed = None
    if record is not None:
        loss = record.loss
        packed = PackedRecord(
            micros(record.not_before),
            micros(record.not_after),
            record.partition,
            record.issuer_key_id,
            None if loss is None else micros(loss.time),
            0 if loss is None else int(loss.cause),
            0 if loss is None else int(loss.reason),
        )
    return Brief(
        answer.kind, answer.serial, answer.status, micros(answer.as_of), answer.sequence, packed
    )


@runtime_checkable
class BriefSource(StatusSource, Protocol):
    """A source that also answers a batch at once, in briefs (a CheckStream batch)."""

    def briefs(self, targets: Sequence[Target]) -> list[Brief]:
        """`brief_of(self.status(...))` for each target, in order."""
        ...


@dataclass(slots=True)
class PackedBatch:
    """A CheckStream batch's index values, read in one transaction and not yet decoded:
    what the compiled encoder (rpc/_batch_wire.pyx) turns into wire bytes without a
    Python object per status. Every key is asked about at one instant, `when`.

    `observers` are called with the batch's tally once it has been answered (label
    code `status * 256 + cause` -> count; see `tally_labels`): the layers that
    count answers (responder/metrics.py) see a packed batch as they see briefs.
    """

    keys: list[bytes]  # record_key of each certificate asked about
    values: list[bytes | None]  # its packed index value (record_format), None: unknown
    issuer_key_ids: list[bytes]  # by the ordinal a value holds
    sequence: int
    when: int  # microseconds since the epoch
    # A compromise announced as of the same read: a layer must then see each answer.
    compromised: bool = False
    observers: list[Callable[[Mapping[int, int]], None]] = dataclasses.field(default_factory=list)

    def answered(self, tally: Mapping[int, int]) -> None:
        for observe in self.observers:
            observe(tally)


@runtime_checkable
class PackedSource(BriefSource, Protocol):
    """A source that can hand over a batch as index values (a CheckStream batch)."""

    def packed(self, keys: list[bytes], when: int) -> PackedBatch | None:
        """The batch's values; None when a layer must see each answer (then `briefs`)."""
        ...


def packed_briefs(batch: PackedBatch) -> list[Brief]:
    """The brief of each key's answer: the reference the compiled encoder follows."""
    ids = batch.issuer_key_ids
    out = []
    for key, value in zip(batch.keys, batch.values, strict=True):
        kind, serial = parse_record_key(key)
        fields = None if value is None else unpack_fields(value)
        out.append(_brief(kind, serial, batch.when, batch.sequence, fields, ids))
    return out


def label_code(status: int, cause: int) -> int:
    """The label code a tally counts an answer by: status * 256 + cause, the loss's
    cause only when the answer is revoked (`code_labels` reads it back)."""
    return status * 256 + cause if status == Status.REVOKED else status * 256


@lru_cache(maxsize=256)  # a handful of codes (status, cause) occur at all
def code_labels(code: int) -> tuple[str, str]:
    """`Brief.labels` of a tally's label code (status * 256 + cause)."""
    # Once per code, not per answer: the enum lookup was most of a unary Check's tally.
    status, cause = Status(code >> 8), code & 0xFF
    return ("revoked", _CAUSE_SLUGS[cause]) if cause else (_STATUS_LABELS[status], "none")


def tally_labels(tally: Mapping[int, int]) -> dict[tuple[str, str], int]:
    """A packed batch's tally as `Brief.labels` -> count."""
    out: dict[tuple[str, str], int] = {}
    for code, count in tally.items():
        labels = code_labels(code)
        out[labels] = out.get(labels, 0) + count
    return out


def briefs(source: StatusSource, targets: Sequence[Target]) -> list[Brief]:
    """The brief of each target's answer, in order; in one go when the source can."""
    if isinstance(source, BriefSource):
        return source.briefs(targets)
    return [brief_of(source.status(kind, serial, as_of)) for kind, serial, as_of in targets]


class IndexHolder:
    """The index a worker reads now; follows the `current` pointer of the index root.

    Swapping is one reference assignment, so a request sees either the old or the
    new index. A replaced index is closed only after a grace period, when no
    request that started on it can still be reading.
    """

    GRACE_SECONDS = 30.0

    def __init__(self, index_root: Path) -> None:
        self._root = index_root
        self._index: Index | None = None
        self._retired: list[tuple[float, Index]] = []
        self._lock = threading.Lock()

    def get(self) -> Index:
        index = self._index
        if index is None:
            raise NotReady("no index loaded yet")
        return index

    def verifiers(self) -> VerifierTable:
        """The verifier registry of the index read now, caught up with its deltas: what
        the gate asks on every call (`get().verifiers`, one call fewer)."""
        index = self._index
        if index is None:
            raise NotReady("no index loaded yet")
        return index.verifiers

    def generation(self) -> tuple[int, int]:
        """What cached OCSP answers depend on: the full snapshot the index read now was
        built from, and the sequence it reflects now (`get().generation()`, one call
        fewer; a delta changes the live index in place)."""
        index = self._index
        if index is None:
            raise NotReady("no index loaded yet")
        return index.generation()

    @property
    def loaded(self) -> bool:
        return self._index is not None

    def refresh(self) -> bool:
        """Open the index `current` points at, if it changed; True when swapped.

        Otherwise catch up with deltas applied to the live index, so a worker that
        gets no calls is current as well (a call checks again itself, cheaply).
        """
        with self._lock:
            self._close_retired()
            target = current_index(self._root)
            if target is None:
                return False
            if self._index is not None and self._index.path == target:
                self._index.refresh()
                return False
            try:
                fresh = Index(target)
            except Exception:
                log.exception("cannot open index %s; keeping the previous one", target)
                return False
            old, self._index = self._index, fresh
            if old is not None:
                self._retired.append((time.monotonic(), old))
            log.info("serving index %s (sequence %d)", target.name, fresh.sequence)
            return True

    def _close_retired(self) -> None:
        now = time.monotonic()
        keep = []
        for retired_at, index in self._retired:
            if now - retired_at > self.GRACE_SECONDS:
                index.close()
            else:
                keep.append((retired_at, index))
        self._retired = keep

    def close(self) -> None:
        with self._lock:
            for _, index in self._retired:
                index.close()
            self._retired = []
            if self._index is not None:
                self._index.close()
                self._index = None


class IndexStatusSource:
    """Answers from the LMDB index: one `get` per certificate, one transaction per batch."""

    def __init__(self, holder: IndexHolder) -> None:
        self._holder = holder

    def status(self, kind: CertKind, serial: int, as_of: datetime) -> Answer:
        index = self._holder.get()
        return _index_answer(index, kind, serial, as_of, index.get(kind, serial))

    def briefs(self, targets: Sequence[Target]) -> list[Brief]:
        index = self._holder.get()  # the whole batch reads one index
        found = index.get_packed([(kind, serial) for kind, serial, _ in targets])
        ids = index.issuer_key_ids
        sequence = index.sequence
        out = []
        instant = None
        when = 0
        for (kind, serial, as_of), fields in zip(targets, found, strict=True):
            if as_of is not instant:  # a batch is mostly one instant: convert it once
                instant, when = as_of, micros(as_of)
            out.append(_brief(kind, serial, when, sequence, fields, ids))
        return out

    def packed(self, keys: list[bytes], when: int) -> PackedBatch:
        values, ids, sequence, compromised = self._holder.get().get_values(keys)
        return PackedBatch(keys, values, ids, sequence, when, compromised)


def _brief(
    kind: CertKind,
    serial: int,
    when: int,
    sequence: int,
    fields: tuple[int, int, int, int, int, int, int] | None,
    ids: Sequence[bytes],
) -> Brief:
    """The brief of one certificate from its packed index fields (None: not held)."""
    if fields is None:
        return Brief(kind, serial, Status.UNKNOWN, when, sequence, None)
    not_before, not_after, partition, ordinal, revoked_at, cause, reason = fields
    lost_at = revoked_at * 1_000_000 if cause else None
    record = PackedRecord(
        not_before * 1_000_000,
        not_after * 1_000_000,
        _partition_text(partition),
        ids[ordinal],
        lost_at,
        cause,
        reason,
    )
    status = status_rule(when, record.not_before, record.not_after, lost_at)
    return Brief(kind, serial, status, when, sequence, record)


_partition_text = lru_cache(maxsize=1 << 14)(partition_text)


def _index_answer(
    index: Index, kind: CertKind, serial: int, as_of: datetime, record: StatusRecord | None
) -> Answer:
    if record is None:
        return unknown_answer(index, kind, serial, as_of)
    times = index.crl_times(record)
    this_update = index.created_at if times is None else times.this_update
    next_update = index.next_update if times is None else times.next_update
    return Answer(
        kind,
        serial,
        record.status_at(as_of),
        record,
        as_of,
        index.sequence,
        this_update,
        next_update,
    )


class IssuerCompromiseSource:
    """第14条 layer: a certificate of a compromised generation is REVOKED from then on.

    The index holds the compromise once per generation (from the signed manifest and
    the root's ARL), not a row per certificate; this layer applies it to each answer
    with the same rule the registry uses (law/issuer_compromise.py). Mobile
    certificates of a compromised card generation are on their own CRLs already.
    """

    def __init__(self, inner: StatusSource, holder: IndexHolder) -> None:
        self._inner = inner
        self._holder = holder
        # Asked once: a runtime Protocol check costs microseconds, and a unary Check
        # goes through here on every call.
        self._packed_inner = inner if isinstance(inner, PackedSource) else None

    def status(self, kind: CertKind, serial: int, as_of: datetime) -> Answer:
        answer = self._inner.status(kind, serial, as_of)
        return _with_compromise(answer, self._holder.get().compromises)

    def briefs(self, targets: Sequence[Target]) -> list[Brief]:
        out = briefs(self._inner, targets)
        compromises = self._holder.get().compromises
        if not compromises:  # the usual case: nothing to apply
            return out
        return [_brief_with_compromise(brief, compromises) for brief in out]

    def packed(self, keys: list[bytes], when: int) -> PackedBatch | None:
        """The inner source's values while no generation is compromised (the usual
        case); otherwise None, and the batch goes through `briefs`, which applies it.
        The values and the announcements come from one read, so they agree."""
        inner = self._packed_inner
        batch = None if inner is None else inner.packed(keys, when)
        return None if batch is None or batch.compromised else batch


def _brief_with_compromise(brief: Brief, compromises: Mapping[bytes, Compromise]) -> Brief:
    """`_with_compromise` for a brief."""
    record = brief.record
    if record is None:
        return brief
    compromise = compromises.get(record.issuer_key_id)
    if compromise is None:
        return brief
    recorded = record.loss()
    loss, _ = effective_loss(recorded, compromise, None, None)
    if loss is recorded or loss is None:
        return brief
    record = record._replace(
        lost_at=micros(loss.time), cause=int(loss.cause), reason=int(loss.reason)
    )
    return brief._replace(record=record, status=record.status_at(brief.as_of))


def _with_compromise(answer: Answer, compromises: Mapping[bytes, Compromise]) -> Answer:
    """`answer` with the compromise of its certificate's generation applied, if any."""
    record = answer.record
    if record is None:
        return answer
    compromise = compromises.get(record.issuer_key_id)
    if compromise is None:
        return answer
    loss, _ = effective_loss(record.loss, compromise, None, None)
    if loss is record.loss:
        return answer
    record = dataclasses.replace(record, loss=loss)
    return dataclasses.replace(answer, record=record, status=record.status_at(answer.as_of))


class Resolver:
    """Turns a certificate or an RFC 6960 CertID into (kind, serial) via the issuers."""

    def __init__(self, holder: IndexHolder) -> None:
        self._holder = holder

    def issuer_for_certificate(self, cert: x509.Certificate) -> IssuerEntry:
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        except x509.ExtensionNotFound:
            raise BadRequest("certificate has no authority key identifier") from None
        if aki.key_identifier is None:
            raise BadRequest("certificate's authority key identifier has no key id")
        # Generations share one name: match the issuer by key, never by name.
        issuer = self._holder.get().issuers.get(aki.key_identifier)
        if issuer is None:
            raise BadRequest("certificate was not issued by an issuer this responder serves")
        try:
            cert.verify_directly_issued_by(issuer.certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise BadRequest("certificate signature does not verify with its issuer") from None
        return issuer

    def from_certificate(self, der: bytes) -> tuple[CertKind, int]:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise BadRequest(f"certificate is not DER X.509: {exc}") from None
        return self.issuer_for_certificate(cert).kind, cert.serial_number

    def issuer_by_hash(
        self, algorithm: str, name_hash: bytes, key_hash: bytes
    ) -> IssuerEntry | None:
        if algorithm not in ("sha1", "sha256"):
            raise BadRequest(f"unsupported CertID hash algorithm {algorithm!r}")
        expected = 20 if algorithm == "sha1" else 32
        if len(name_hash) != expected or len(key_hash) != expected:
            raise BadRequest(f"CertID hashes must be {expected} octets for {algorithm}")
        return self._holder.get().issuer_by_hash(algorithm, name_hash, key_hash)
