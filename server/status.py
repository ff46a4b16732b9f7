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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from server.domain import CertKind, Status, StatusRecord
from server.index import Index, IssuerEntry, current_index
from server.law.issuer_compromise import Compromise, effective_loss

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


@runtime_checkable
class BatchStatusSource(StatusSource, Protocol):
    """A source that answers many targets at once (a CheckStream batch)."""

    def statuses(self, targets: Sequence[Target]) -> list[Answer]:
        """The answers `status` gives for each target, in order."""
        ...


def statuses(source: StatusSource, targets: Sequence[Target]) -> list[Answer]:
    """`source.status` for each target, in order; in one go when the source can batch."""
    if isinstance(source, BatchStatusSource):
        return source.statuses(targets)
    return [source.status(kind, serial, as_of) for kind, serial, as_of in targets]


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

    @property
    def loaded(self) -> bool:
        return self._index is not None

    def refresh(self) -> bool:
        """Open the index `current` points at, if it changed; True when swapped."""
        with self._lock:
            self._close_retired()
            target = current_index(self._root)
            if target is None or (self._index is not None and self._index.path == target):
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

    def statuses(self, targets: Sequence[Target]) -> list[Answer]:
        index = self._holder.get()  # the whole batch reads one index
        records = index.get_many([(kind, serial) for kind, serial, _ in targets])
        return [
            _index_answer(index, kind, serial, as_of, record)
            for (kind, serial, as_of), record in zip(targets, records, strict=True)
        ]


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

    def status(self, kind: CertKind, serial: int, as_of: datetime) -> Answer:
        answer = self._inner.status(kind, serial, as_of)
        return _with_compromise(answer, self._holder.get().compromises)

    def statuses(self, targets: Sequence[Target]) -> list[Answer]:
        answers = statuses(self._inner, targets)
        compromises = self._holder.get().compromises
        if not compromises:  # the usual case: nothing to apply
            return answers
        return [_with_compromise(answer, compromises) for answer in answers]


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
