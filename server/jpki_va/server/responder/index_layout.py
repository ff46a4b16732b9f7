"""The index's LMDB layout: databases, keys and values, as build, delta and reader share it."""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import lmdb
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jpki_va.core.domain import (
    CertKind,
    record_key,
)
from jpki_va.server.model.registry_values import LossEvent, Scope
from jpki_va.server.pki.crl_profile import crl_entry_cause, crl_entry_reason
from jpki_va.server.snapshot.data_files import (
    EventFields,
    link_items,
    parse_consent,
    parse_event_row,
    parse_signing_record,
    read_event_rows,
    read_lines,
)
from jpki_va.server.snapshot.manifest import (
    ANNOUNCEMENT,
    CrlInfo,
    SnapshotRejected,
)
from jpki_va.server.snapshot.manifest import CONSENTS as CONSENTS_FILE
from jpki_va.server.snapshot.manifest import EVENTS as EVENTS_FILE
from jpki_va.server.snapshot.manifest import LINKS as LINKS_FILE
from jpki_va.server.snapshot.manifest import SIGNING_RECORDS as SIGNING_RECORDS_FILE
from jpki_va.server.snapshot.verify import VerifiedCrl, VerifiedSnapshot

CURRENT = "current"


_MAP_SIZE = 1 << 40  # address space only; the file grows as needed


_DBS = (b"status", b"issuers", b"meta", b"links", b"signing_records", b"consents", b"events")


_VERSION = b"version"
# The public announcement of issuer compromises, as signed (meta db).
ANNOUNCEMENT_KEY = b"announcement"


_RETIRED_EVENTS_FILE = "events.jsonl"  # JSON lines, before events.bin


def index_dirname(sequence: int) -> str:
    return f"idx-{sequence:012d}"


def issuer_lookup_keys(cert: x509.Certificate) -> list[bytes]:
    """RFC 6960 CertID (issuerNameHash, issuerKeyHash) keys for SHA-1 and SHA-256."""
    name = cert.subject.public_bytes()
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        key_bits = public.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        key_bits = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    else:
        raise TypeError("unsupported issuer key")
    return [
        alg.encode() + b":" + hashlib.new(alg, name).digest() + hashlib.new(alg, key_bits).digest()
        for alg in ("sha1", "sha256")
    ]


@dataclass(frozen=True)
class CrlTimes:
    number: int
    this_update: datetime
    next_update: datetime


Revocation = tuple[int, int, int]  # revoked_at, cause, reason


def _entry_value(info_file: str, entry: x509.RevokedCertificate) -> Revocation:
    cause = crl_entry_cause(entry)
    if cause is None:
        raise SnapshotRejected(f"{info_file}: CRL entry without a loss cause")
    return (
        int(entry.revocation_date_utc.timestamp()),
        int(cause),
        int(crl_entry_reason(entry)),
    )


def snapshot_event_rows(snapshot: VerifiedSnapshot) -> Iterator[tuple[bytes, EventFields]]:
    """The rows of a verified snapshot's events file with their checked fields, read
    as they are used (a national full snapshot carries millions)."""
    files = snapshot.manifest.files
    if _RETIRED_EVENTS_FILE in files:  # its events would silently be missing
        raise SnapshotRejected(f"{_RETIRED_EVENTS_FILE} is a retired format: republish")
    if EVENTS_FILE not in files:
        return
    data = (snapshot.path / EVENTS_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != files[EVENTS_FILE]:
        raise SnapshotRejected(f"{EVENTS_FILE} changed after verification")
    try:
        yield from read_event_rows(data)
    except ValueError as exc:
        raise SnapshotRejected(f"{EVENTS_FILE}: {exc}") from exc


def snapshot_events(snapshot: VerifiedSnapshot) -> list[LossEvent]:
    """The loss events a verified snapshot carries (its events file)."""
    try:
        return [parse_event_row(row) for row, _ in snapshot_event_rows(snapshot)]
    except ValueError as exc:
        raise SnapshotRejected(f"{EVENTS_FILE}: {exc}") from exc


# In `meta`, per CRL scope (kind, issuer generation, partition): the full CRL's number
# and times, then the current CRL's (the full one until a delta brings a delta CRL).
# A key per scope, so a delta rewrites only the scopes it brings and a reader parses
# only those again: as one JSON value beside the manifest, every delta rewrote it and
# every worker parsed it again (4.3 MB at a million holders' 6,800 scopes: ~75 ms in
# the ingester and ~40 ms in each worker, per delta).
SCOPE_PREFIX = b"scope:"
_SCOPE_VALUE = struct.Struct(">QqqQqq")  # number, thisUpdate, nextUpdate (µs), twice
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def scope_key(kind: CertKind, issuer_key_id: bytes, partition: str) -> bytes:
    return SCOPE_PREFIX + bytes([kind, len(issuer_key_id)]) + issuer_key_id + partition.encode()


def scope_of_key(key: bytes) -> Scope:
    """The scope `scope_key` made `key` of."""
    at = len(SCOPE_PREFIX)
    end = at + 2 + key[at + 1]
    return CertKind(key[at]), key[at + 2 : end], key[end:].decode()


def times_of(info: CrlInfo) -> CrlTimes:
    return CrlTimes(info.number, info.this_update, info.next_update)


def pack_scope(full: CrlTimes, current: CrlTimes) -> bytes:
    return _SCOPE_VALUE.pack(
        full.number,
        (full.this_update - _EPOCH) // _MICROSECOND,
        (full.next_update - _EPOCH) // _MICROSECOND,
        current.number,
        (current.this_update - _EPOCH) // _MICROSECOND,
        (current.next_update - _EPOCH) // _MICROSECOND,
    )


def unpack_scope(raw: bytes) -> tuple[CrlTimes, CrlTimes]:
    """The full CRL's times and the current CRL's, as `pack_scope` wrote them."""
    fn, ft, fu, cn, ct, cu = _SCOPE_VALUE.unpack(raw)
    full = CrlTimes(fn, _EPOCH + ft * _MICROSECOND, _EPOCH + fu * _MICROSECOND)
    if (cn, ct, cu) == (fn, ft, fu):
        return full, full
    return full, CrlTimes(cn, _EPOCH + ct * _MICROSECOND, _EPOCH + cu * _MICROSECOND)


# In `meta`: the root's ARL (DER) of the full snapshot, and per scope the current delta
# CRL (DER): the full snapshot's empty one until a delta snapshot brings another.
ARL_KEY = b"arl"


def delta_crl_key(kind: CertKind, issuer_key_id: bytes, partition: str) -> bytes:
    return f"delta:{kind.name}:{issuer_key_id.hex()}:{partition}".encode()


def put_delta_crls(txn: lmdb.Transaction, meta: Any, crls: Iterable[VerifiedCrl]) -> None:
    for vc in crls:
        info = vc.info
        key = delta_crl_key(info.kind, info.issuer_key_id, info.partition)
        txn.put(key, vc.crl.public_bytes(Encoding.DER), db=meta)


def _put_events(
    txn: lmdb.Transaction,
    dbs: dict[bytes, Any],
    rows: Iterable[tuple[bytes, EventFields]],
    *,
    append: bool,
) -> None:
    """Each event's row under its sequence (8 bytes, big-endian: in order)."""
    txn.cursor(db=dbs[b"events"]).putmulti(
        ((fields[0].to_bytes(8, "big"), row) for row, fields in rows), append=append
    )


def _put_links(txn: lmdb.Transaction, links: Any, snapshot: VerifiedSnapshot) -> None:
    """The links file's rows; mapped, not read: at 10 M holders it is 1.3 GB."""
    with (
        (snapshot.path / LINKS_FILE).open("rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
    ):
        if hashlib.sha256(m).hexdigest() != snapshot.manifest.files[LINKS_FILE]:
            raise SnapshotRejected(f"{LINKS_FILE} changed after verification")
        # A full build starts empty, so the ordered rows append; a delta inserts.
        append = txn.stat(links)["entries"] == 0
        count, items = link_items(m)
        try:
            added = txn.cursor(db=links).putmulti(items, append=append)[1]
        finally:
            del items  # it holds a view of the mapped file until it goes
    if append and added != count:
        raise ValueError(f"{LINKS_FILE} rows out of order")


def _put_data(txn: lmdb.Transaction, dbs: dict[bytes, Any], snapshot: VerifiedSnapshot) -> None:
    """Links, signing records and consents of a full or delta snapshot."""
    files = snapshot.manifest.files
    try:
        if LINKS_FILE in files:
            _put_links(txn, dbs[b"links"], snapshot)
        if SIGNING_RECORDS_FILE in files:
            for line in read_lines(snapshot.path / SIGNING_RECORDS_FILE):
                record = parse_signing_record(line)
                txn.put(
                    record_key(record.kind, record.serial),
                    json.dumps(line, ensure_ascii=False, sort_keys=True).encode(),
                    db=dbs[b"signing_records"],
                )
        if CONSENTS_FILE in files:
            for line in read_lines(snapshot.path / CONSENTS_FILE):
                consent = parse_consent(line)
                key = record_key(consent.kind, consent.serial)
                if consent.granted:
                    if txn.get(key, db=dbs[b"signing_records"]) is None:
                        raise ValueError(f"consent to serial {consent.serial:X} without its record")
                    txn.put(key + consent.verifier.encode(), b"", db=dbs[b"consents"])
                    continue
                txn.delete(key + consent.verifier.encode(), db=dbs[b"consents"])
                cursor = txn.cursor(db=dbs[b"consents"])
                if not (cursor.set_range(key) and bytes(cursor.key()).startswith(key)):
                    # No verifier may receive it any more: personal data leaves the index.
                    txn.delete(key, db=dbs[b"signing_records"])
    except ValueError as exc:
        raise SnapshotRejected(f"{snapshot.path.name}: {exc}") from exc


def _required(raw: bytes | memoryview | None) -> bytes:
    if raw is None:
        raise SnapshotRejected("the index has no manifest metadata")
    return bytes(raw)


def put_announcement(txn: lmdb.Transaction, meta_db: Any, snapshot: VerifiedSnapshot) -> None:
    """Keep the snapshot's public announcement (第15条第3項) as it was signed, if any."""
    if ANNOUNCEMENT in snapshot.manifest.files:
        txn.put(ANNOUNCEMENT_KEY, (snapshot.path / ANNOUNCEMENT).read_bytes(), db=meta_db)
