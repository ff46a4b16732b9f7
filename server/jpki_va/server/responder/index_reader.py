"""The responder's LMDB index: built from a verified snapshot, read by the workers.

One environment per full snapshot, built in its own directory with sorted
`append=True` writes and published by an atomic flip of the `current` symlink.
A delta snapshot is applied to the live environment in ONE write transaction
(`apply_delta`), which the workers' per-request read transactions see at once.
The status of (kind, serial) is one `get` in the `status` database.

Databases: `status` (record key -> packed value, snapshot.record_format), `issuers` (CertID
hashes -> kind, ordinal), `meta` (`manifest`: what the index reflects; `version`:
bumped by every delta so readers reload `manifest` cheaply; `issuers`: PEM),
`links` (key(a) + key(b) -> type, direction; both directions), `signing_records`
(key -> JSON), `consents` (key + verifier -> b""), `events` (sequence -> its events.bin row,
snapshot.data_files).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb
from cryptography import x509

from jpki_va.core.domain import (
    CertKind,
    Link,
    LinkType,
    StatusRecord,
    parse_record_key,
    record_key,
)
from jpki_va.server.base.private_files import LMDB_MODE
from jpki_va.server.law.issuer_compromise import Compromise
from jpki_va.server.model.registry_values import LossEvent, Scope
from jpki_va.server.model.verifiers import VerifierTable
from jpki_va.server.pki.cert_profile import key_id
from jpki_va.server.responder.index_layout import (
    _DBS,
    _MAP_SIZE,
    _VERSION,
    ANNOUNCEMENT_KEY,
    ARL_KEY,
    CURRENT,
    SCOPE_PREFIX,
    CrlTimes,
    _required,
    delta_crl_key,
    scope_of_key,
    unpack_scope,
)
from jpki_va.server.responder.lmdb_pages import PageReader
from jpki_va.server.snapshot.data_files import (
    SigningRecord,
    parse_event_row,
    parse_signing_record,
)
from jpki_va.server.snapshot.manifest import (
    compromise_from_json,
)
from jpki_va.server.snapshot.record_format import (
    unpack_fields,
    unpack_value,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssuerEntry:
    kind: CertKind
    key_id: bytes
    certificate: x509.Certificate
    active: bool = False  # the newest generation of its kind


def current_index(index_root: Path) -> Path | None:
    try:
        return index_root / (index_root / CURRENT).readlink()
    except FileNotFoundError:
        return None


def _scope_times(
    txn: lmdb.Transaction, meta_db: Any, previous: _Meta | None
) -> tuple[dict[bytes, tuple[bytes, Scope]], dict[Scope, CrlTimes], dict[Scope, CrlTimes]]:
    """Each scope's key row (its value and scope), current CRL times and full CRL times.

    Of `previous`, the objects of every scope whose value is the same bytes: a delta
    rewrites a few scopes, so only they are parsed again, and what a reload frees is
    mostly what it replaces (fewer half-used heap pages).
    """
    before = {} if previous is None else previous.scope_rows
    rows: dict[bytes, tuple[bytes, Scope]] = {}
    current: dict[Scope, CrlTimes] = {}
    full: dict[Scope, CrlTimes] = {}
    cursor = txn.cursor(db=meta_db)
    if not cursor.set_range(SCOPE_PREFIX):
        return rows, current, full
    for raw_key, raw_value in cursor:
        key, value = bytes(raw_key), bytes(raw_value)  # already bytes: no copy
        if not key.startswith(SCOPE_PREFIX):
            break
        known = before.get(key)
        if known is None:
            scope = scope_of_key(key)
        else:
            scope = known[1]
            if known[0] == value and previous is not None:
                rows[key] = known
                current[scope] = previous.crl_times[scope]
                full[scope] = previous.full_crl_times[scope]
                continue
        rows[key] = (value, scope)
        full[scope], current[scope] = unpack_scope(value)
    return rows, current, full


@dataclass(frozen=True)
class _Meta:
    """What a reader caches from `meta`; replaced whole when `version` changes."""

    version: bytes
    sequence: int
    full_sequence: int
    created_at: datetime
    event_sequence: int
    crl_times: dict[Scope, CrlTimes]  # the latest, full or delta
    full_crl_times: dict[Scope, CrlTimes]  # the full snapshot's
    scope_rows: dict[bytes, tuple[bytes, Scope]]  # each scope's key -> its value, its scope
    next_update: datetime
    latest_next_update: datetime
    compromises: dict[bytes, Compromise]
    verifiers: VerifierTable


def _version_number(version: bytes) -> int:
    return int.from_bytes(version, "big")  # b"": an index no delta has touched


class Index:
    """A read-only handle on one index environment. Open it after fork.

    Deltas change the environment under it: every lookup checks its own read
    transaction against the cached metadata (by the transaction's id, else by reading
    `version`, one small `get`) and reloads the metadata when a delta has bumped it,
    so answers and their CRL times always agree.

    What is read without a lookup (the verifier registry, for access control)
    would otherwise wait for one: `refresh` catches up whenever the environment's
    last committed transaction has moved, which costs a comparison, not a read.
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
            mode=LMDB_MODE,  # the lock file, should it be missing
        )
        dbs = {name: self._env.open_db(name, create=False) for name in _DBS}
        self._status = dbs[b"status"]
        self._meta_db = dbs[b"meta"]
        self._links = dbs[b"links"]
        self._signing_records = dbs[b"signing_records"]
        self._consents = dbs[b"consents"]
        self._events = dbs[b"events"]
        # Held while the metadata is reloaded and while `_meta`/`_seen_txn` are replaced.
        self._install_lock = threading.Lock()
        # One read of values at a time per index. py-lmdb lets the GIL go around every
        # `get`, so with several CheckStream batches in flight in one worker their
        # threads took the GIL from each other at every key: with all four of the
        # bench's streams on one worker, 12 µs of worker CPU and 0.35 thread switches
        # per status, against 6 µs and 0.09 with them spread over two workers; 9 µs
        # and 0.14 with this lock. A thread waiting here holds no GIL, and a batch's
        # keys are read in tens of microseconds.
        self._batch_lock = threading.Lock()
        self._older: _Meta | None = None  # the last metadata loaded for an older view
        with self._env.begin() as txn:
            raw_meta = txn.get(b"manifest", db=self._meta_db)
            issuer_pem = txn.get(b"issuers", db=self._meta_db)
            if raw_meta is None or issuer_pem is None:
                raise ValueError(f"{path} is not a complete index")
            self._meta = self._load_meta(txn)
            # The last write transaction whose metadata `_meta` reflects (or a newer one).
            self._seen_txn: int = txn.id()
            # A read transaction's id is the last write it sees, so every transaction
            # of this id has this metadata: one pair, replaced whole.
            self._meta_at: tuple[int, _Meta] = (self._seen_txn, self._meta)
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
        # CertID hashes -> issuer, held in memory: a handful of keys that only a full
        # build writes, asked per OCSP request (a dict lookup, not an LMDB read).
        self._by_hash: dict[bytes, IssuerEntry] = {}
        with self._env.begin(db=dbs[b"issuers"]) as txn:
            for lookup, raw in txn.cursor():
                entry = self.issuers.get(self.issuer_key_ids[raw[1]])
                if entry is not None:
                    self._by_hash[bytes(lookup)] = entry
        # A batch's status values walked side by side from the mapped file (None: LMDB's
        # get serves alone); it reads the tree of the transaction it is given.
        self._pages = PageReader.open(self._env, path, b"status")
        # The last write's id read from the file's meta pages (None: ask a read
        # transaction): `refresh` needs no transaction while no delta has come.
        self._last_txn = None if self._pages is None else self._pages.last_txn

    def _load_meta(self, txn: lmdb.Transaction, previous: _Meta | None = None) -> _Meta:
        version = bytes(txn.get(_VERSION, default=b"", db=self._meta_db))
        meta = json.loads(_required(txn.get(b"manifest", db=self._meta_db)))
        if "crls" in meta:
            raise ValueError(
                f"{self.path} is an index of an earlier layout: a responder upgrades it "
                "when it starts"
            )
        scope_rows, crl_times, full_crl_times = _scope_times(txn, self._meta_db, previous)
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
            scope_rows=scope_rows,
            next_update=min((t.next_update for t in crl_times.values()), default=epoch),
            latest_next_update=max((t.next_update for t in crl_times.values()), default=epoch),
            compromises={c.key_id: c for c in compromises},
            verifiers=VerifierTable(
                [] if raw_verifiers is None else json.loads(bytes(raw_verifiers))
            ),
        )

    def _fresh(self, txn: lmdb.Transaction) -> _Meta:
        """The metadata as of `txn` (cached; reloaded when a delta bumped `version`).

        One thread reloads it; the others that meet the same new version wait for that
        and share it. The manifest lists every CRL scope (megabytes of JSON at a million
        holders): every request thread parsing its own copy at each delta cost a worker
        seconds of CPU and, in the copies' peak, ~100 MB of private memory it kept.

        A transaction that sees the same last write as the one whose metadata was last
        checked needs no `get` of `version` (one LMDB call, and a GIL release, less per
        lookup while no delta arrives).
        """
        txn_id = txn.id()
        seen_at, seen = self._meta_at
        if txn_id == seen_at:
            return seen
        version = bytes(txn.get(_VERSION, default=b"", db=self._meta_db))
        meta = self._meta  # another thread may replace it: use what was checked
        if version == meta.version:
            self._meta_at = (txn_id, meta)
            return meta
        with self._install_lock:
            for known in (self._meta, self._older):
                if known is not None and known.version == version:
                    return known
            meta = self._load_meta(txn, self._meta)
            # A transaction that began before a newer delta must not take the cache
            # back to its older view: `refresh` trusts the cache to be new.
            if _version_number(meta.version) > _version_number(self._meta.version):
                self._meta, self._older = meta, None
                self._meta_at = (txn_id, meta)
            else:
                self._older = meta
        return meta

    def announcement(self) -> bytes | None:
        """The public announcement of issuer compromises (CMS, DER), or None."""
        with self._env.begin() as txn:
            raw = txn.get(ANNOUNCEMENT_KEY, db=self._meta_db)
            return None if raw is None else bytes(raw)

    # what the index reflects ------------------------------------------------------------
    @property
    def sequence(self) -> int:
        return self._meta.sequence

    @property
    def full_sequence(self) -> int:
        """The full snapshot the index was built from (deltas since then build on it)."""
        return self._meta.full_sequence

    def generation(self) -> tuple[int, int]:
        """(full_sequence, sequence) as of now, caught up with the deltas applied: what
        cached OCSP answers depend on, read in one call (a miss reads it once)."""
        self.refresh()
        meta = self._meta
        return meta.full_sequence, meta.sequence

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
        """The verifier registry as of the latest delta applied (a delta replaces it whole).

        Refreshed on every read: who may have what must not wait for some lookup to
        notice a delta (a removed verifier would keep its answers meanwhile).
        """
        self.refresh()
        return self._meta.verifiers

    @property
    def current_crls(self) -> dict[tuple[CertKind, bytes, str], CrlTimes]:
        """(kind, issuer key id, partition) -> the full CRL of the snapshot the index was
        built from (delta CRLs build on it; the CRL archive keeps full CRLs)."""
        return dict(self._meta.full_crl_times)

    def arl_der(self) -> bytes | None:
        """The root's ARL of the full snapshot the index was built from."""
        with self._env.begin(db=self._meta_db) as txn:
            raw = txn.get(ARL_KEY)
        return None if raw is None else bytes(raw)

    def delta_crl_der(self, kind: CertKind, issuer_key_id: bytes, partition: str) -> bytes | None:
        """The scope's current delta CRL: the latest delta's, else the full snapshot's
        empty one."""
        with self._env.begin(db=self._meta_db) as txn:
            raw = txn.get(delta_crl_key(kind, issuer_key_id, partition))
        return None if raw is None else bytes(raw)

    @property
    def compromises(self) -> dict[bytes, Compromise]:
        """Announced issuer compromises (第15条第3項), by generation key id."""
        return self._meta.compromises

    def refresh(self) -> None:
        """Reload the metadata if a delta changed it.

        Only the ingester writes to a published index, one transaction per delta, so
        while the last write committed is the one already seen, nothing changed. Asked
        on every identification, so asked as cheaply as can be: read from the file's
        meta pages where the page reader maps them (one compiled call, no read
        transaction); else a new read transaction's id, the last write it sees (py-lmdb
        renews a spare one in place without releasing the GIL, where
        `Environment.info()` released it, a hand-off between grpc's threads on every
        call under load, and built a dict). A write the meta pages show before a new
        transaction does is asked of a transaction, which decides.
        """
        last = self._last_txn
        if last is not None and last() == self._seen_txn:
            return
        with self._env.begin() as txn:
            seen = txn.id()
            if seen == self._seen_txn:
                return
            self._fresh(txn)
        with self._install_lock:
            self._seen_txn = max(self._seen_txn, seen)

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
        with self._batch_lock, self._env.begin() as txn:
            self._fresh(txn)
            get = txn.get
            raws = [get(record_key(kind, serial), db=status) for kind, serial in keys]
        return [None if raw is None else unpack_fields(raw) for raw in raws]

    def get_values(self, keys: list[bytes]) -> tuple[list[bytes | None], list[bytes], int, bool]:
        """(packed value of each record key or None, issuer key ids by ordinal, sequence,
        whether an issuer compromise is announced), all from one read transaction: the
        values are not decoded here."""
        if len(keys) == 1:
            # A lone key (unary Check, OCSP) has no other to overlap its waits with:
            # LMDB's get reads it, and it needs no turn at the batches' lock (one
            # GIL release, as any batch's key has).
            with self._env.begin(db=self._status) as txn:
                meta = self._fresh(txn)
                values = [txn.get(keys[0])]
            return values, self.issuer_key_ids, meta.sequence, bool(meta.compromises)
        with self._batch_lock, self._env.begin(db=self._status) as txn:
            meta = self._fresh(txn)
            pages = self._pages
            found = None if pages is None or not keys else pages.values(txn, keys)
            # Else the status table as the transaction's own: each key read by `map`.
            values = list(map(txn.get, keys)) if found is None else found
        return values, self.issuer_key_ids, meta.sequence, bool(meta.compromises)

    @property
    def pages_walked(self) -> bool:
        """Whether a batch's status values are walked side by side over the mapped file
        (lmdb_pages), not read by LMDB's get one key after another."""
        return self._pages is not None

    def keys_after(self, after: bytes, limit: int) -> list[bytes]:
        """Up to `limit` record keys of the status database past `after`, in order
        (b"": from the first): a walk over every certificate, one read at a time."""
        keys: list[bytes] = []
        with self._env.begin(db=self._status) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(after):
                return keys
            for key in cursor.iternext(keys=True, values=False):
                if key == after:
                    continue
                keys.append(bytes(key))
                if len(keys) == limit:
                    break
        return keys

    def issuer_by_hash(
        self, algorithm: str, name_hash: bytes, key_hash: bytes
    ) -> IssuerEntry | None:
        return self._by_hash.get(algorithm.encode() + b":" + name_hash + key_hash)

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
        with self._batch_lock:
            if self._pages is not None:
                self._pages.close()
                self._pages = None
        self._env.close()
