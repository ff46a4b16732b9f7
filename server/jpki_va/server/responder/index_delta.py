"""Delta snapshots applied to the live index in place, in one write transaction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lmdb

from jpki_va.core.domain import (
    CertKind,
    record_key,
)
from jpki_va.server.base.faults import fault_point
from jpki_va.server.base.private_files import LMDB_MODE
from jpki_va.server.model.registry_values import Scope
from jpki_va.server.responder.index_layout import (
    _DBS,
    _MAP_SIZE,
    _VERSION,
    CrlTimes,
    _entry_value,
    _put_data,
    _put_events,
    _required,
    pack_scope,
    put_announcement,
    put_delta_crls,
    scope_key,
    snapshot_event_rows,
    times_of,
    unpack_scope,
)
from jpki_va.server.snapshot.data_files import (
    parse_event_row,
)
from jpki_va.server.snapshot.manifest import EVENTS as EVENTS_FILE
from jpki_va.server.snapshot.manifest import RECORDS as RECORDS_FILE
from jpki_va.server.snapshot.manifest import VERIFIERS as VERIFIERS_FILE
from jpki_va.server.snapshot.manifest import (
    Manifest,
    SnapshotRejected,
)
from jpki_va.server.snapshot.record_format import (
    pack_value,
    partition_text,
    read_records,
    unpack_loss,
    with_loss,
)
from jpki_va.server.snapshot.verify import VerifiedSnapshot


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
    env = lmdb.open(str(index_path), map_size=_MAP_SIZE, max_dbs=len(_DBS), mode=LMDB_MODE)
    try:
        dbs = {name: env.open_db(name, create=False) for name in _DBS}
        with env.begin(write=True) as txn:
            result = _apply(txn, dbs, snapshot)
        fault_point("index.delta.applied")
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


def _full_crl(txn: lmdb.Transaction, meta: Any, scope: Scope) -> CrlTimes | None:
    """The full CRL of `scope` the index was built with; None: no such scope."""
    raw = txn.get(scope_key(*scope), db=meta)
    return None if raw is None else unpack_scope(bytes(raw))[0]


def _apply_records(txn: lmdb.Transaction, dbs: dict[bytes, Any], snapshot: VerifiedSnapshot) -> int:
    manifest = snapshot.manifest
    data = (snapshot.path / RECORDS_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.files[RECORDS_FILE]:
        raise SnapshotRejected(f"{RECORDS_FILE} changed after verification")
    status = dbs[b"status"]
    known: set[Scope] = set()
    records = 0
    for key, nb, na, part, ordinal in read_records(data):
        scope = (CertKind(key[0]), manifest.issuer_key_ids[ordinal], partition_text(part))
        if scope not in known:
            if _full_crl(txn, dbs[b"meta"], scope) is None:
                raise SnapshotRejected(f"delta record {key.hex()} is in no CRL's scope")
            known.add(scope)
        if not txn.put(key, pack_value(nb, na, part, ordinal), overwrite=False, db=status):
            raise SnapshotRejected(f"delta record {key.hex()} is already in the index")
        records += 1
    if records != manifest.record_count:
        raise SnapshotRejected("record count differs from the manifest")
    return records


def _apply_crls(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], snapshot: VerifiedSnapshot
) -> list[bytes]:
    """Revocations of the delta CRLs not yet in the index; each becomes its scope's
    current CRL."""
    status, meta = dbs[b"status"], dbs[b"meta"]
    newly: list[bytes] = []
    for vc in snapshot.crls:
        info = vc.info
        full = _full_crl(txn, meta, info.scope)
        if info.delta_base is None or full is None or full.number != info.delta_base:
            raise SnapshotRejected(f"{info.file}: not a delta on the live full CRL")
        for entry in vc.crl:
            key = record_key(info.kind, entry.serial_number)
            raw = txn.get(key, db=status)
            if raw is None:
                raise SnapshotRejected(f"{info.file}: entry names a certificate never issued")
            if unpack_loss(bytes(raw))[1] == 0:  # loss is final: the first one stays
                txn.put(key, with_loss(bytes(raw), *_entry_value(info.file, entry)), db=status)
                newly.append(key)
        txn.put(scope_key(*info.scope), pack_scope(full, times_of(info)), db=meta)
    return newly


def _apply(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], snapshot: VerifiedSnapshot
) -> AppliedDelta:
    manifest = snapshot.manifest
    meta = json.loads(_required(txn.get(b"manifest", db=dbs[b"meta"])))
    _check_follows(meta, manifest)
    status = dbs[b"status"]
    records = _apply_records(txn, dbs, snapshot)
    newly = _apply_crls(txn, dbs, snapshot)
    put_delta_crls(txn, dbs[b"meta"], snapshot.crls)  # they replace the scopes' deltas
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
        put_announcement(txn, dbs[b"meta"], snapshot)
    meta.update(
        sequence=manifest.sequence,
        created_at=manifest.created_at.isoformat(),
        event_sequence=manifest.event_sequence,
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
