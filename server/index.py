"""The responder's LMDB index: built from a verified snapshot, read by the workers.

One environment per full snapshot, built in its own directory with sorted
`append=True` writes and published by an atomic flip of the `current` symlink.
A delta snapshot is applied to the live environment in ONE write transaction
(`apply_delta`), which the workers' per-request read transactions see at once.
The status of (kind, serial) is one `get` in the `status` database.

Databases: `status` (record key -> packed value, records.py), `issuers` (CertID
hashes -> kind, ordinal), `meta` (`manifest`: what the index reflects; `version`:
bumped by every delta so readers reload `manifest` cheaply; `issuers`: PEM),
`links` (key(a) + key(b) -> type, direction; both directions), `signing_records`
(key -> JSON), `consents` (key + verifier -> b""), `events` (sequence -> its events.bin row,
snapshot_data.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import lmdb
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from server.crlstream import read_entries, tbs_certlist
from server.domain import (
    CertKind,
    Link,
    LinkType,
    StatusRecord,
    Verifier,
    parse_record_key,
    record_key,
)
from server.law.issuer_compromise import Compromise
from server.profiles import crl_entry_cause, crl_entry_reason, key_id
from server.records import (
    FILE_RECORD_SIZE,
    index_items,
    loss_suffix,
    pack_value,
    partition_number,
    partition_text,
    read_records,
    record_scopes,
    records_body,
    unpack_fields,
    unpack_loss,
    unpack_value,
    with_loss,
)
from server.registry import LossEvent
from server.snapshot import CONSENTS as CONSENTS_FILE
from server.snapshot import EVENTS as EVENTS_FILE
from server.snapshot import LINKS as LINKS_FILE
from server.snapshot import RECORDS as RECORDS_FILE
from server.snapshot import SIGNING_RECORDS as SIGNING_RECORDS_FILE
from server.snapshot import VERIFIERS as VERIFIERS_FILE
from server.snapshot import (
    CrlInfo,
    Manifest,
    SnapshotRejected,
    VerifiedCrl,
    VerifiedSnapshot,
    compromise_from_json,
    compromise_to_json,
)
from server.snapshot_data import (
    EventFields,
    SigningRecord,
    link_items,
    parse_consent,
    parse_event_row,
    parse_signing_record,
    read_event_rows,
    read_lines,
)

log = logging.getLogger(__name__)

CURRENT = "current"
_MAP_SIZE = 1 << 40  # address space only; the file grows as needed
_DBS = (b"status", b"issuers", b"meta", b"links", b"signing_records", b"consents", b"events")
_VERSION = b"version"
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


class VerifierTable:
    """The verifier registry of one index: by id and by client-certificate fingerprint."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.by_id: dict[str, Verifier] = {}
        self.by_fingerprint: dict[bytes, Verifier] = {}
        for entry in entries:
            verifier = Verifier.from_json(entry)
            self.by_id[verifier.id] = verifier
            for fingerprint in verifier.cert_fingerprints:
                self.by_fingerprint[fingerprint] = verifier


@dataclass(frozen=True)
class IssuerEntry:
    kind: CertKind
    key_id: bytes
    certificate: x509.Certificate
    active: bool = False  # the newest generation of its kind


def build_index(snapshot: VerifiedSnapshot, index_root: Path) -> Path:
    """Build the index of a verified full snapshot in a new directory; returns it.

    The directory is built under a temporary name and renamed when complete, so a
    crash leaves no half-written index behind a real name.
    """
    manifest = snapshot.manifest
    if manifest.type != "full":
        raise SnapshotRejected("only a full snapshot builds a new index")
    index_root.mkdir(parents=True, exist_ok=True)
    final = index_root / index_dirname(manifest.sequence)
    tmp = index_root / f".build-{index_dirname(manifest.sequence)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _build(snapshot, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


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


def _crl_losses(snapshot: VerifiedSnapshot, vc: VerifiedCrl) -> Iterator[tuple[bytes, bytes]]:
    """(record key, loss suffix) of each entry of a verified CRL.

    Our own encoding is read by crlstream's strict reader from the file, checked against
    the signed manifest's hash (the bytes the verifier checked the signature over);
    anything else by cryptography, entry by entry.
    """
    info = vc.info
    kind = bytes([info.kind])
    der = (snapshot.path / info.file).read_bytes()
    if hashlib.sha256(der).hexdigest() != snapshot.manifest.files[info.file]:
        raise SnapshotRejected(f"{info.file} changed after verification")
    try:
        # The signed bytes: cryptography's tbs_certlist_bytes re-encodes the whole list.
        entries = read_entries(tbs_certlist(der))
    except ValueError:
        entries = None
    if entries is not None:
        for serial, revoked_at, cause, reason in entries:
            yield kind + serial, loss_suffix(revoked_at, cause, reason)
        return
    try:
        for entry in vc.crl:
            yield (
                record_key(info.kind, entry.serial_number),
                loss_suffix(*_entry_value(info.file, entry)),
            )
    except ValueError as exc:
        raise SnapshotRejected(f"{info.file}: {exc}") from exc


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


def _check_records_hash(snapshot: VerifiedSnapshot, m: mmap.mmap) -> None:
    # The verifier hashed this file already; hashing what we read closes the window
    # in which it could have changed in between.
    if hashlib.sha256(m).hexdigest() != snapshot.manifest.files[RECORDS_FILE]:
        raise SnapshotRejected(f"{RECORDS_FILE} changed after verification")


def _check_scopes(
    snapshot: VerifiedSnapshot, found: set[tuple[int, int, int]], compromised: set[bytes]
) -> None:
    """Every (kind, partition, issuer) of the records must be some CRL's scope, or the
    generation compromised (its losses then come from the events and the ARL)."""
    key_ids = snapshot.manifest.issuer_key_ids
    scopes = {
        (int(vc.info.kind), partition_number(vc.info.partition), vc.info.issuer_key_id)
        for vc in snapshot.crls
    }
    uncovered = 0
    for kind, partition, ordinal in found:
        if ordinal >= len(key_ids) or kind not in _KIND_BYTES:
            raise SnapshotRejected(f"{RECORDS_FILE}: a record names an unknown kind or issuer")
        kid = key_ids[ordinal]
        if (kind, partition, kid) not in scopes and kid not in compromised:
            uncovered += 1
    if uncovered:
        raise SnapshotRejected(
            f"records of {uncovered} (kind, partition, issuer) groups are in no CRL's scope"
        )


_KIND_BYTES = frozenset(int(k) for k in CertKind)


def _losses(
    snapshot: VerifiedSnapshot,
    event_rows: Iterable[tuple[bytes, EventFields]],
    compromised: set[bytes],
) -> dict[bytes, bytes]:
    """Record key -> loss suffix of every certificate the snapshot says lost effect."""
    losses: dict[bytes, bytes] = {}
    for vc in snapshot.crls:
        losses.update(_crl_losses(snapshot, vc))
    # A compromised generation has no CRL any more: its earlier losses come from the
    # events (signed with the manifest), the compromise itself from the ARL.
    if compromised:
        for _, (_, key, _, kid, time, _, cause, reason, _, _) in event_rows:
            if kid in compromised:
                losses[key] = loss_suffix(time // 1_000_000, cause, reason)
    return losses


_STATUS_BATCH = 1_000_000  # records per write transaction of a full build


def _put_status(
    env: lmdb.Environment, status: Any, snapshot: VerifiedSnapshot, compromised: set[bytes],
    losses: dict[bytes, bytes],
) -> None:  # fmt: skip
    """Every record with its loss (popped from `losses`) into the empty `status` db.

    In transactions of _STATUS_BATCH records: one transaction of 25 million makes LMDB
    spill dirty pages as it goes (1.5x the time, 1.4x the memory, measured at 10 M
    holders). Nobody reads the environment before it is complete and published.
    """
    manifest = snapshot.manifest
    with (
        (snapshot.path / RECORDS_FILE).open("rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
    ):
        _check_records_hash(snapshot, m)
        try:
            body = records_body(m)
        except ValueError as exc:
            raise SnapshotRejected(f"{RECORDS_FILE}: {exc}") from exc
        try:
            _check_scopes(snapshot, record_scopes(body), compromised)
            if len(body) // FILE_RECORD_SIZE != manifest.record_count:
                raise SnapshotRejected("record count differs from the manifest")
            items = index_items(body, losses)
            added = 0
            try:
                while True:
                    with env.begin(write=True) as txn, txn.cursor(db=status) as cursor:
                        # append=True refuses a key not above the last: a disorder
                        # shows as fewer records added than read.
                        read, put = cursor.putmulti(islice(items, _STATUS_BATCH), append=True)
                    added += put
                    if read < _STATUS_BATCH:
                        break
            finally:
                del items  # its iterators hold views of the mapped file until they go
        finally:
            body.release()
    if added != manifest.record_count:
        raise SnapshotRejected(f"{RECORDS_FILE}: records out of key order")


def _build(snapshot: VerifiedSnapshot, path: Path) -> None:
    manifest = snapshot.manifest
    compromised = {c.key_id for c in manifest.compromises}
    losses = _losses(snapshot, snapshot_event_rows(snapshot), compromised)
    crl_entries = len(losses)
    key_ids = manifest.issuer_key_ids
    kinds = {c.info.issuer_key_id: c.info.kind for c in snapshot.crls}
    kinds.update({c.key_id: c.kind for c in manifest.compromises})
    env = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=len(_DBS), sync=False, metasync=False)
    try:
        dbs = {name: env.open_db(name) for name in _DBS}
        _put_status(env, dbs[b"status"], snapshot, compromised, losses)
        if losses:
            raise SnapshotRejected(
                f"{len(losses)} of {crl_entries} CRL entries name certificates never issued"
            )
        with env.begin(write=True) as txn:
            for ordinal, (kid, cert) in enumerate(zip(key_ids, snapshot.issuers, strict=True)):
                kind = kinds.get(kid)
                if kind is None:
                    continue  # a generation with nothing left to answer for
                for lookup in issuer_lookup_keys(cert):
                    txn.put(lookup, bytes([kind, ordinal]), db=dbs[b"issuers"])
            _put_events(txn, dbs, snapshot_event_rows(snapshot), append=True)
            _put_data(txn, dbs, snapshot)
            meta = {
                "sequence": manifest.sequence,
                "full_sequence": manifest.sequence,
                "created_at": manifest.created_at.isoformat(),
                "event_sequence": manifest.event_sequence,
                "issuer_key_ids": [k.hex() for k in key_ids],
                "issuer_kinds": {k.hex(): v.name for k, v in kinds.items()},
                "crls": [c.info.to_json() for c in snapshot.crls],
                "crl_base": {_scope_key(c.info): c.info.number for c in snapshot.crls},
                "full_crls": [c.info.to_json() for c in snapshot.crls],
                "compromises": [compromise_to_json(c) for c in manifest.compromises],
            }
            txn.put(b"manifest", json.dumps(meta).encode(), db=dbs[b"meta"])
            txn.put(_VERSION, (0).to_bytes(8, "big"), db=dbs[b"meta"])
            txn.put(
                b"issuers",
                b"".join(c.public_bytes(Encoding.PEM) for c in snapshot.issuers),
                db=dbs[b"meta"],
            )
            verifiers = [v.to_json() for v in snapshot.verifiers()]
            txn.put(b"verifiers", json.dumps(verifiers).encode(), db=dbs[b"meta"])
        env.sync(True)
    finally:
        env.close()


def _scope_key(info: CrlInfo) -> str:
    return f"{info.kind.name}:{info.issuer_key_id.hex()}:{info.partition}"


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


class DeltaNotApplicable(Exception):
    """A valid delta that does not follow the live index: wait for the next full one."""


@dataclass(frozen=True)
class AppliedLoss:
    kind: CertKind
    serial: int
    recorded_at: datetime | None  # registry commit time, when the delta carries the event


@dataclass(frozen=True)
class AppliedDelta:
    sequence: int
    records: int
    losses: list[AppliedLoss]


def apply_delta(snapshot: VerifiedSnapshot, index_path: Path) -> AppliedDelta:
    """Apply a verified delta to the live index at `index_path` in one write transaction.

    Refuses (nothing written) a delta that does not follow the live index, and
    rejects one whose contents disagree with its signed delta CRLs.
    """
    manifest = snapshot.manifest
    if manifest.type != "delta":
        raise SnapshotRejected("only a delta snapshot is applied to a live index")
    env = lmdb.open(str(index_path), map_size=_MAP_SIZE, max_dbs=len(_DBS))
    try:
        dbs = {name: env.open_db(name, create=False) for name in _DBS}
        with env.begin(write=True) as txn:
            result = _apply(txn, dbs, snapshot)
        return result
    finally:
        env.close()


def _check_follows(meta: dict[str, Any], manifest: Manifest) -> None:
    if manifest.base_sequence != meta["full_sequence"]:
        raise DeltaNotApplicable(
            f"delta {manifest.sequence} is based on {manifest.base_sequence}, "
            f"the live full snapshot is {meta['full_sequence']}"
        )
    if manifest.previous_sequence != meta["sequence"]:
        raise DeltaNotApplicable(
            f"delta {manifest.sequence} follows {manifest.previous_sequence}, "
            f"the index reflects {meta['sequence']}"
        )
    if [k.hex() for k in manifest.issuer_key_ids] != meta["issuer_key_ids"]:
        raise DeltaNotApplicable(f"delta {manifest.sequence} has other issuer generations")


def _apply_records(
    txn: lmdb.Transaction, status: Any, snapshot: VerifiedSnapshot, crl_base: dict[str, int]
) -> int:
    manifest = snapshot.manifest
    data = (snapshot.path / RECORDS_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.files[RECORDS_FILE]:
        raise SnapshotRejected(f"{RECORDS_FILE} changed after verification")
    records = 0
    for key, nb, na, part, ordinal in read_records(data):
        kid = manifest.issuer_key_ids[ordinal]
        if f"{CertKind(key[0]).name}:{kid.hex()}:{partition_text(part)}" not in crl_base:
            raise SnapshotRejected(f"delta record {key.hex()} is in no CRL's scope")
        if not txn.put(key, pack_value(nb, na, part, ordinal), overwrite=False, db=status):
            raise SnapshotRejected(f"delta record {key.hex()} is already in the index")
        records += 1
    if records != manifest.record_count:
        raise SnapshotRejected("record count differs from the manifest")
    return records


def _apply_crls(
    txn: lmdb.Transaction,
    status: Any,
    snapshot: VerifiedSnapshot,
    crl_base: dict[str, int],
    crls: dict[str, Any],
) -> list[bytes]:
    """Revocations of the delta CRLs not yet in the index; updates `crls` (the times)."""
    newly: list[bytes] = []
    for vc in snapshot.crls:
        info = vc.info
        scope = _scope_key(info)
        if info.delta_base is None or crl_base.get(scope) != info.delta_base:
            raise SnapshotRejected(f"{info.file}: not a delta on the live full CRL")
        for entry in vc.crl:
            key = record_key(info.kind, entry.serial_number)
            raw = txn.get(key, db=status)
            if raw is None:
                raise SnapshotRejected(f"{info.file}: entry names a certificate never issued")
            if unpack_loss(bytes(raw))[1] == 0:  # loss is final: the first one stays
                txn.put(key, with_loss(bytes(raw), *_entry_value(info.file, entry)), db=status)
                newly.append(key)
        crls[scope] = info.to_json()
    return newly


def _apply(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], snapshot: VerifiedSnapshot
) -> AppliedDelta:
    manifest = snapshot.manifest
    meta = json.loads(_required(txn.get(b"manifest", db=dbs[b"meta"])))
    _check_follows(meta, manifest)
    status = dbs[b"status"]
    crl_base: dict[str, int] = meta["crl_base"]
    records = _apply_records(txn, status, snapshot, crl_base)
    crls = {_scope_key(CrlInfo.from_json(c)): c for c in meta["crls"]}
    newly = _apply_crls(txn, status, snapshot, crl_base, crls)
    rows = list(snapshot_event_rows(snapshot))
    try:
        events = [parse_event_row(row) for row, _ in rows]
    except ValueError as exc:
        raise SnapshotRejected(f"{EVENTS_FILE}: {exc}") from exc
    for event in events:
        raw = txn.get(record_key(event.kind, event.serial), db=status)
        revoked_at, cause, _ = (0, 0, 0) if raw is None else unpack_loss(bytes(raw))
        if cause != event.loss.cause or revoked_at != int(event.loss.time.timestamp()):
            raise SnapshotRejected(
                f"event {event.sequence} ({event.kind.name} {event.serial:X}) is not on a CRL"
            )
    _put_events(txn, dbs, rows, append=False)
    _put_data(txn, dbs, snapshot)
    if VERIFIERS_FILE in manifest.files:  # the whole registry, replaced
        verifiers = [v.to_json() for v in snapshot.verifiers()]
        txn.put(b"verifiers", json.dumps(verifiers).encode(), db=dbs[b"meta"])
    meta.update(
        sequence=manifest.sequence,
        created_at=manifest.created_at.isoformat(),
        event_sequence=manifest.event_sequence,
        crls=list(crls.values()),
    )
    txn.put(b"manifest", json.dumps(meta).encode(), db=dbs[b"meta"])
    version = int.from_bytes(txn.get(_VERSION, default=b"\0", db=dbs[b"meta"]), "big")
    txn.put(_VERSION, (version + 1).to_bytes(8, "big"), db=dbs[b"meta"])
    recorded = {record_key(e.kind, e.serial): e.recorded_at for e in events}
    losses = [
        AppliedLoss(CertKind(key[0]), int.from_bytes(key[1:], "big"), recorded.get(key))
        for key in newly
    ]
    return AppliedDelta(manifest.sequence, records, losses)


def publish_index(index_root: Path, built: Path) -> None:
    """Point `current` at a built index: one atomic rename of a symlink."""
    tmp = index_root / f".{CURRENT}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(built.name)
    tmp.replace(index_root / CURRENT)
    dirfd = os.open(index_root, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def current_index(index_root: Path) -> Path | None:
    try:
        return index_root / (index_root / CURRENT).readlink()
    except FileNotFoundError:
        return None


def _crl_times(crls: list[dict[str, Any]]) -> dict[tuple[CertKind, bytes, str], CrlTimes]:
    out = {}
    for c in crls:
        scope = (CertKind[c["kind"]], bytes.fromhex(c["issuer_key_id"]), c["partition"])
        out[scope] = CrlTimes(
            number=c["number"],
            this_update=datetime.fromisoformat(c["this_update"]),
            next_update=datetime.fromisoformat(c["next_update"]),
        )
    return out


@dataclass(frozen=True)
class _Meta:
    """What a reader caches from `meta`; replaced whole when `version` changes."""

    version: bytes
    sequence: int
    full_sequence: int
    created_at: datetime
    event_sequence: int
    crl_times: dict[tuple[CertKind, bytes, str], CrlTimes]  # the latest, full or delta
    full_crl_times: dict[tuple[CertKind, bytes, str], CrlTimes]  # the full snapshot's
    next_update: datetime
    latest_next_update: datetime
    compromises: dict[bytes, Compromise]
    verifiers: VerifierTable


class Index:
    """A read-only handle on one index environment. Open it after fork.

    Deltas change the environment under it: every lookup reads `version` in its
    own read transaction (one small `get`) and reloads the cached metadata when a
    delta has bumped it, so answers and their CRL times always agree.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # Readahead stays on: turning it off (MADV_RANDOM) kept ~50 MB of untouched
        # pages out of a worker's RSS on a cold 1 M index, but also stops the kernel
        # mapping neighbouring cached pages per fault, and HTTP OCSP lost ~20 % of its
        # rate on the 10 M index; file-backed RSS grows with the load either way.
        self._env = lmdb.open(
            str(path),
            readonly=True,
            max_dbs=len(_DBS),
            lock=True,
            map_size=_MAP_SIZE,
        )
        dbs = {name: self._env.open_db(name, create=False) for name in _DBS}
        self._status = dbs[b"status"]
        self._issuers_db = dbs[b"issuers"]
        self._meta_db = dbs[b"meta"]
        self._links = dbs[b"links"]
        self._signing_records = dbs[b"signing_records"]
        self._consents = dbs[b"consents"]
        self._events = dbs[b"events"]
        with self._env.begin() as txn:
            raw_meta = txn.get(b"manifest", db=self._meta_db)
            issuer_pem = txn.get(b"issuers", db=self._meta_db)
            if raw_meta is None or issuer_pem is None:
                raise ValueError(f"{path} is not a complete index")
            self._meta = self._load_meta(txn)
        meta = json.loads(bytes(raw_meta))
        self.issuer_key_ids = [bytes.fromhex(k) for k in meta["issuer_key_ids"]]
        kinds = {bytes.fromhex(k): CertKind[v] for k, v in meta["issuer_kinds"].items()}
        self.issuers: dict[bytes, IssuerEntry] = {}
        for cert in x509.load_pem_x509_certificates(bytes(issuer_pem)):
            kid = key_id(cert.public_key())
            if kid in kinds:
                self.issuers[kid] = IssuerEntry(kinds[kid], kid, cert)
        for kind in CertKind:
            generations = [e for e in self.issuers.values() if e.kind is kind]
            if generations:
                newest = max(generations, key=lambda e: e.certificate.not_valid_before_utc)
                self.issuers[newest.key_id] = replace(newest, active=True)

    def _load_meta(self, txn: lmdb.Transaction) -> _Meta:
        version = bytes(txn.get(_VERSION, default=b"", db=self._meta_db))
        meta = json.loads(_required(txn.get(b"manifest", db=self._meta_db)))
        crl_times = _crl_times(meta["crls"])
        full_crl_times = _crl_times(meta.get("full_crls", meta["crls"]))
        compromises = [compromise_from_json(c) for c in meta.get("compromises", [])]
        raw_verifiers = txn.get(b"verifiers", db=self._meta_db)
        epoch = datetime.fromtimestamp(0, UTC)
        return _Meta(
            version=version,
            sequence=meta["sequence"],
            full_sequence=meta["full_sequence"],
            created_at=datetime.fromisoformat(meta["created_at"]),
            event_sequence=meta["event_sequence"],
            crl_times=crl_times,
            full_crl_times=full_crl_times,
            next_update=min((t.next_update for t in crl_times.values()), default=epoch),
            latest_next_update=max((t.next_update for t in crl_times.values()), default=epoch),
            compromises={c.key_id: c for c in compromises},
            verifiers=VerifierTable(
                [] if raw_verifiers is None else json.loads(bytes(raw_verifiers))
            ),
        )

    def _fresh(self, txn: lmdb.Transaction) -> _Meta:
        """The metadata as of `txn` (cached; reloaded when a delta bumped `version`)."""
        version = txn.get(_VERSION, default=b"", db=self._meta_db)
        meta = self._meta  # another thread may replace it: use what was checked
        if bytes(version) != meta.version:
            meta = self._meta = self._load_meta(txn)
        return meta

    # what the index reflects ------------------------------------------------------------
    @property
    def sequence(self) -> int:
        return self._meta.sequence

    @property
    def full_sequence(self) -> int:
        """The full snapshot the index was built from (deltas since then build on it)."""
        return self._meta.full_sequence

    @property
    def created_at(self) -> datetime:
        return self._meta.created_at

    @property
    def event_sequence(self) -> int:
        return self._meta.event_sequence

    @property
    def next_update(self) -> datetime:
        return self._meta.next_update

    @property
    def latest_next_update(self) -> datetime:
        """The latest nextUpdate any answer from this index carries."""
        return self._meta.latest_next_update

    @property
    def verifiers(self) -> VerifierTable:
        """The verifier registry (a delta replaces it whole)."""
        return self._meta.verifiers

    @property
    def current_crls(self) -> dict[tuple[CertKind, bytes, str], CrlTimes]:
        """(kind, issuer key id, partition) -> the full CRL of the snapshot the index was
        built from (delta CRLs build on it; the CRL archive keeps full CRLs)."""
        return dict(self._meta.full_crl_times)

    @property
    def compromises(self) -> dict[bytes, Compromise]:
        """Announced issuer compromises (第15条第3項), by generation key id."""
        return self._meta.compromises

    def refresh(self) -> None:
        """Reload the metadata if a delta changed it."""
        with self._env.begin() as txn:
            self._fresh(txn)

    # lookups ----------------------------------------------------------------------------
    def get(self, kind: CertKind, serial: int) -> StatusRecord | None:
        key = record_key(kind, serial)
        with self._env.begin() as txn:
            self._fresh(txn)
            raw = txn.get(key, db=self._status)
        if raw is None:
            return None
        return unpack_value(key, bytes(raw), self.issuer_key_ids)

    def get_packed(
        self, keys: Sequence[tuple[CertKind, int]]
    ) -> list[tuple[int, int, int, int, int, int, int] | None]:
        """The packed fields (records.unpack_fields) of each key, in order, or None where
        the index has no such certificate; one read transaction, one version check."""
        status = self._status
        with self._env.begin() as txn:
            self._fresh(txn)
            get = txn.get
            raws = [get(record_key(kind, serial), db=status) for kind, serial in keys]
        return [None if raw is None else unpack_fields(raw) for raw in raws]

    def issuer_by_hash(
        self, algorithm: str, name_hash: bytes, key_hash: bytes
    ) -> IssuerEntry | None:
        with self._env.begin(db=self._issuers_db) as txn:
            raw = txn.get(algorithm.encode() + b":" + name_hash + key_hash)
        if raw is None:
            return None
        return self.issuers.get(self.issuer_key_ids[raw[1]])

    def crl_times(self, record: StatusRecord) -> CrlTimes | None:
        return self._meta.crl_times.get((record.kind, record.issuer_key_id, record.partition))

    def links(self, kind: CertKind, serial: int) -> list[Link]:
        """Every link that involves (kind, serial), oriented as published (a: the card/old)."""
        prefix = record_key(kind, serial)
        out = []
        with self._env.begin(db=self._links) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for raw_key, value in cursor:
                    key = bytes(raw_key)
                    if not key.startswith(prefix):
                        break
                    other_kind, other_serial = parse_record_key(key[len(prefix) :])
                    link_type, direction = LinkType(value[0]), value[1]
                    if direction == 0:
                        out.append(Link(link_type, kind, serial, other_kind, other_serial))
                    else:
                        out.append(Link(link_type, other_kind, other_serial, kind, serial))
        return out

    def signing_record(self, kind: CertKind, serial: int) -> SigningRecord | None:
        with self._env.begin(db=self._signing_records) as txn:
            raw = txn.get(record_key(kind, serial))
        return None if raw is None else parse_signing_record(json.loads(bytes(raw)))

    def consent(self, kind: CertKind, serial: int, verifier: str) -> bool:
        """Whether the holder of (kind, serial) consented to `verifier` receiving its record."""
        with self._env.begin(db=self._consents) as txn:
            return txn.get(record_key(kind, serial) + verifier.encode()) is not None

    def events_since(self, sequence: int) -> Iterator[LossEvent]:
        """Loss events after `sequence`, in order (those in retention when published)."""
        with self._env.begin(db=self._events) as txn:
            cursor = txn.cursor()
            if not cursor.set_range((sequence + 1).to_bytes(8, "big")):
                return
            for _, value in cursor:
                yield parse_event_row(value)

    def event_batch(self, since: int, limit: int) -> tuple[list[LossEvent], int]:
        """Up to `limit` events after `since`, and the sequence they bring the reader to.

        The second value is the last event's sequence when `limit` cut the batch, else
        the event sequence the index reflects: every event up to it has been read. Both
        come from one read transaction, so a delta applied meanwhile cannot open a gap.
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        events: list[LossEvent] = []
        with self._env.begin() as txn:
            meta = self._fresh(txn)
            cursor = txn.cursor(db=self._events)
            if cursor.set_range((since + 1).to_bytes(8, "big")):
                for _, value in cursor:
                    events.append(parse_event_row(value))
                    if len(events) == limit:
                        return events, events[-1].sequence
        last = events[-1].sequence if events else 0
        return events, max(meta.event_sequence, last)

    def close(self) -> None:
        self._env.close()
