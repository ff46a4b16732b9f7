"""The index build: a verified full snapshot in, a new LMDB index directory out."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import lmdb
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.domain import (
    CertKind,
    record_key,
)
from jpki_va.server.base.faults import fault_point
from jpki_va.server.base.private_files import LMDB_MODE, private_dir
from jpki_va.server.base.progress import Progress
from jpki_va.server.pki.crl_stream import read_entries, tbs_certlist
from jpki_va.server.responder.index_layout import (
    _DBS,
    _MAP_SIZE,
    _VERSION,
    ARL_KEY,
    CURRENT,
    _entry_value,
    _put_data,
    _put_events,
    index_dirname,
    issuer_lookup_keys,
    pack_scope,
    put_announcement,
    put_delta_crls,
    scope_key,
    snapshot_event_rows,
    times_of,
)
from jpki_va.server.responder.storage import no_space, prepare_lock_file
from jpki_va.server.snapshot.data_files import (
    EventFields,
)
from jpki_va.server.snapshot.manifest import RECORDS as RECORDS_FILE
from jpki_va.server.snapshot.manifest import (
    SnapshotRejected,
    compromise_to_json,
)
from jpki_va.server.snapshot.record_format import (
    FILE_RECORD_SIZE,
    index_items,
    loss_suffix,
    partition_number,
    record_scopes,
    records_body,
)
from jpki_va.server.snapshot.verify import VerifiedCrl, VerifiedSnapshot

_BUILD_PREFIX = ".build-"
# What a build or a publish killed midway leaves: its directory, the pointer's new link.
_ABANDONED = re.compile(rf"{re.escape(_BUILD_PREFIX)}idx-\d+|\.{CURRENT}\.\d+")


def build_index(snapshot: VerifiedSnapshot, index_root: Path) -> Path:
    """Build the index of a verified full snapshot in a new directory; returns it.

    The directory is built under a temporary name and renamed when complete, so a
    crash leaves no half-written index behind a real name. A disk too full for it is
    NoSpace, and the partial build is removed.
    """
    manifest = snapshot.manifest
    if manifest.type != "full":
        raise SnapshotRejected("only a full snapshot builds a new index")
    private_dir(index_root)
    final = index_root / index_dirname(manifest.sequence)
    tmp = index_root / f"{_BUILD_PREFIX}{index_dirname(manifest.sequence)}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        private_dir(tmp)
        prepare_lock_file(tmp)  # before LMDB maps it: see storage
        _build(snapshot, tmp)
    except (lmdb.Error, OSError) as exc:
        # Judged before the partial build goes: its pages are what filled the disk.
        full = no_space(exc, index_root)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("index.build.written")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fault_point("index.build.renamed")
    return final


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
            progress = Progress(f"index {manifest.sequence}", manifest.record_count)
            try:
                while True:
                    with env.begin(write=True) as txn, txn.cursor(db=status) as cursor:
                        # append=True refuses a key not above the last: a disorder
                        # shows as fewer records added than read.
                        read, put = cursor.putmulti(islice(items, _STATUS_BATCH), append=True)
                    added += put
                    progress.advance(read)
                    if read < _STATUS_BATCH:
                        break
                progress.finish()
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
    env = lmdb.open(
        str(path),
        map_size=_MAP_SIZE,
        max_dbs=len(_DBS),
        sync=False,
        metasync=False,
        mode=LMDB_MODE,
    )
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
                "compromises": [compromise_to_json(c) for c in manifest.compromises],
            }
            txn.put(b"manifest", json.dumps(meta).encode(), db=dbs[b"meta"])
            for vc in snapshot.crls:
                times = times_of(vc.info)
                txn.put(scope_key(*vc.info.scope), pack_scope(times, times), db=dbs[b"meta"])
            txn.put(_VERSION, (0).to_bytes(8, "big"), db=dbs[b"meta"])
            txn.put(
                b"issuers",
                b"".join(c.public_bytes(Encoding.PEM) for c in snapshot.issuers),
                db=dbs[b"meta"],
            )
            verifiers = [v.to_json() for v in snapshot.verifiers()]
            txn.put(b"verifiers", json.dumps(verifiers).encode(), db=dbs[b"meta"])
            put_announcement(txn, dbs[b"meta"], snapshot)
            if snapshot.arl is not None:
                txn.put(ARL_KEY, snapshot.arl.public_bytes(Encoding.DER), db=dbs[b"meta"])
            put_delta_crls(txn, dbs[b"meta"], snapshot.empty_deltas)
        env.sync(True)
    finally:
        env.close()


def prune_abandoned_builds(index_root: Path) -> list[str]:
    """Remove what killed builds and publishes left under `index_root`; their names.

    Only for the one process that builds there (the responder supervisor holding its
    state directory), before it builds: another builder's work in progress looks the
    same. Names not of this module's making are left alone.
    """
    removed: list[str] = []
    if not index_root.is_dir():
        return removed
    for path in sorted(index_root.iterdir()):
        if not _ABANDONED.fullmatch(path.name):
            continue
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
        removed.append(path.name)
    return removed


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
    fault_point("index.published")
