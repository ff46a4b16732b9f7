"""The provision ledger: counts for the annual report (第41条) and the audit trail.

One LMDB environment per writing process: the signer has its own, and each
responder worker writes its own shard (`worker-N` under the responder's ledger
directory, N the worker's slot), because workers sharing one environment queue on
its single write lock and fsync. A shard is held with an exclusive `flock` for its
writer's life, so two live processes never write one shard and a restarted worker
takes its slot's shard back. Everything that reads counts reads a `LedgerSet`: the
shards of a directory summed, plus the directory itself when it holds an
environment (the signer's ledger, and a responder's ledger written before shards).

Every provision is counted before its answer leaves, so a killed process loses
nothing a client saw answered. A shard counts an answer by an add to the counter
cell of its key, mapped shared (`slot_counts.py`): it reaches the kernel's page
cache at once, with no write transaction per answer. The signer's ledger (and a
ledger opened without a shard's writer lock) counts in LMDB write transactions,
whose commits reach the page cache as well. Disclosures of personal data are
written to LMDB and forced to disk (fsync) before the answer leaves; counts are
forced by `sync()`, which the owner calls periodically, so a machine crash can lose
at most the counts of that last interval but never leaves a broken store.

A shard written before the counter cells holds its counts in LMDB (`counts`); it is
read as it is, not migrated: readers sum both forms, and its writer counts anew in
cells.

Counts are kept per day (in Japan time, the agency's), provision kind and verifier,
so a report covers any period; the audit trail is one entry per disclosure.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import lmdb

from jpki_va.core.clock import JST
from jpki_va.core.domain import Provision
from jpki_va.server.base.private_files import LMDB_MODE, private_dir, write_private
from jpki_va.server.ledger.counter_cells import CounterFile
from jpki_va.server.ledger.slot_counts import CellsFull, SlotCounts, cell_counts

_MAP_SIZE = 1 << 36
_ONE_DAY = timedelta(days=1)
_COUNT = 8  # bytes of a big-endian counter
#: Cells of a shard's counter file: one per (day, kind, verifier) counted and not yet
#: purged. The file is sparse (128 MiB of address space; the disk holds the pages used).
CELLS = 1 << 24
_CELLS_FILE = "counts.cells"


class LedgerError(Exception):
    """The ledger cannot be opened, read or written: nothing of the write was recorded."""


class ShardInUse(LedgerError):
    """Another live process writes this ledger shard: a second writer is refused."""


class LedgerClosed(LedgerError):
    """The ledger is closed: nothing more is recorded, so nothing is answered."""


@dataclass(frozen=True, slots=True)
class Entry:
    """What one answer provided to one verifier: written together with others."""

    verifier_id: str
    counts: Mapping[Provision, int]
    when: datetime
    disclosures: Sequence[Disclosure] = ()


@dataclass(frozen=True, slots=True)
class Disclosure:
    """One disclosure of personal data, as the audit trail keeps it (証跡)."""

    time: datetime
    verifier_id: str
    provision: Provision
    subject: str  # what was asked about, e.g. "CARD_SIGN:0A1B2C"
    detail: str = ""  # what was given, without the personal data itself

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "verifier": self.verifier_id,
            "provision": self.provision.name,
            "subject": self.subject,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Disclosure:
        return cls(
            time=datetime.fromisoformat(data["time"]),
            verifier_id=data["verifier"],
            provision=Provision[data["provision"]],
            subject=data["subject"],
            detail=data["detail"],
        )


class Recorder(Protocol):
    """Where provisions are recorded: a Ledger."""

    def record(
        self,
        verifier_id: str,
        counts: Mapping[Provision, int],
        when: datetime,
        disclosures: Sequence[Disclosure] = (),
    ) -> None: ...

    def record_one(self, verifier_id: str, provision: Provision, when: datetime) -> None: ...


@dataclass(frozen=True, slots=True)
class Count:
    day: date
    provision: Provision
    verifier_id: str
    count: int


def _count_key(day: date, provision: Provision, verifier_id: str) -> bytes:
    return f"{day.isoformat()}|{provision.name}|{verifier_id}".encode()


def _parse_count_key(key: bytes) -> tuple[date, Provision, str]:
    day, provision, verifier_id = bytes(key).decode().split("|", 2)
    return date.fromisoformat(day), Provision[provision], verifier_id


def _audit_key(when: datetime, serial: int) -> bytes:
    # Time order first; pid and a per-process serial keep concurrent writers apart.
    nanos = int(when.timestamp() * 1_000_000) * 1000
    return nanos.to_bytes(8, "big") + os.getpid().to_bytes(4, "big") + serial.to_bytes(8, "big")


def _closed() -> LedgerClosed:
    """What a count raises when the cells were unmapped (ValueError from an add): the
    ledger was closed before any add of this count."""
    return LedgerClosed("the provision ledger is closed; the answer is withheld")


def local_day(when: datetime) -> date:
    return when.astimezone(JST).date()


class Ledger:
    """Provision counts and the audit trail in one LMDB environment. Open after fork."""

    _DBS = (b"counts", b"audit")
    _TABLE = b"cells"  # count key -> cell of the counter file (slot_counts.py)

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        exclusive: bool = False,
        map_size: int = _MAP_SIZE,
        writemap: bool = False,
        cells: int | None = None,
        compiled: bool | None = None,
    ) -> None:
        """`exclusive`: hold the writer lock of `path` until close(), or raise ShardInUse.

        `writemap`: LMDB writes the pages of a transaction in the shared mapping
        itself, so a commit makes no system call. The data file is then as large as
        `map_size`, sparse: the disk holds only the pages written.

        `cells`: count in a counter file of that many cells (needs `exclusive`: one
        writer gives cells out); without it, each record is a write transaction.
        A reader reads the counter file whenever the ledger has one. `compiled`:
        False takes the pure-Python cells (tests compare the two).
        """
        if readonly and not (path / "data.mdb").is_file():
            raise LedgerError(f"{path} holds no provision ledger")
        if cells is not None and not exclusive:
            raise ValueError("counter cells need the writer lock (exclusive=True)")
        self._writer: int | None = None
        self._file: CounterFile | None = None
        self._tally: SlotCounts | None = None
        self._table: Any = None
        try:
            if not readonly:
                private_dir(path)
            if exclusive:
                self._writer = _hold_writer_lock(path)
            # sync off: a commit reaches the page cache (safe from a killed process);
            # disclosures and sync() force it to disk.
            self._env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=len(self._DBS) + 1,
                readonly=readonly,
                sync=False,
                metasync=False,
                writemap=writemap and not readonly,
                mode=LMDB_MODE,
            )
            self._counts, self._audit = (
                self._env.open_db(name, create=not readonly) for name in self._DBS
            )
            self._open_cells(path, cells, compiled)
        except (lmdb.Error, OSError) as exc:
            self._release()
            raise LedgerError(f"cannot open the provision ledger {path}: {exc}") from None
        self.path = path
        self._serial = 0
        self._lock = threading.Lock()
        self._closed = False
        # The JST day of the last count and its bounds: most answers fall in it.
        self._day: tuple[datetime, datetime, date] | None = None

    def _open_cells(self, path: Path, cells: int | None, compiled: bool | None) -> None:
        file = path / _CELLS_FILE
        if cells is None and not file.is_file():
            return  # the signer's ledger, or a shard from before the cells
        try:
            self._table = self._env.open_db(self._TABLE, create=cells is not None)
        except lmdb.NotFoundError:
            return  # a file with no table yet: no cell holds a count
        kind = {} if compiled is None else {"compiled": compiled}
        self._file = CounterFile(file, cells or 1, writable=cells is not None, **kind)
        if cells is not None:
            self._tally = SlotCounts(self._env, self._table, self._file)

    def record(
        self,
        verifier_id: str,
        counts: Mapping[Provision, int],
        when: datetime,
        disclosures: Sequence[Disclosure] = (),
    ) -> None:
        """Count provisions to one verifier (and audit disclosures), all or nothing."""
        if self._tally is None:
            self.record_all([Entry(verifier_id, counts, when, disclosures)])
            return
        adds: list[tuple[int, int]] = []
        self._cells_of(adds, verifier_id, counts, when)
        self._count(adds, disclosures)

    def record_one(self, verifier_id: str, provision: Provision, when: datetime) -> None:
        """`record(verifier_id, {provision: 1}, when)`: a unary call's one answer, with
        no mapping to walk (the hot path of unary Check)."""
        tally = self._tally
        slot = (
            None
            if tally is None
            else tally.slots.get((self._local_day(when), provision, verifier_id))
        )
        if tally is None or slot is None:  # no cells, or a key without its cell yet:
            self.record(verifier_id, {provision: 1}, when)  # `record` gives it
            return
        try:  # `_count` of one add and no disclosure, a frame less
            tally.add(slot, 1)
        except ValueError:
            raise _closed() from None

    def record_all(self, entries: Iterable[Entry]) -> None:
        """Every entry recorded, or none (one write transaction, or cells and the audit).

        Raises LedgerError when it cannot be recorded (a full map or counter file, a
        closed ledger, an I/O error); nothing of it is then recorded.
        """
        if self._tally is not None:
            adds: list[tuple[int, int]] = []
            audit: list[Disclosure] = []
            for entry in entries:
                self._cells_of(adds, entry.verifier_id, entry.counts, entry.when)
                audit.extend(entry.disclosures)
            self._count(adds, audit)
            return
        totals: Counter[bytes] = Counter()
        disclosures: list[Disclosure] = []
        for entry in entries:
            day = local_day(entry.when)
            for provision, n in entry.counts.items():
                if n > 0:
                    totals[_count_key(day, provision, entry.verifier_id)] += n
            disclosures.extend(entry.disclosures)
        if not totals and not disclosures:
            return
        self._write(totals, disclosures)

    def _local_day(self, when: datetime) -> date:
        known = self._day
        if known is not None and known[0] <= when < known[1]:
            return known[2]
        day = local_day(when)
        # Bounds in UTC, as the clock gives `when`: comparing datetimes of one tzinfo
        # is a few ns, of two a few µs.
        start = datetime.combine(day, datetime.min.time(), JST).astimezone(UTC)
        self._day = (start, start + _ONE_DAY, day)
        return day

    def _cells_of(
        self,
        adds: list[tuple[int, int]],
        verifier: str,
        counts: Mapping[Provision, int],
        when: datetime,
    ) -> None:
        """Append (cell, n) for each count, giving a new key its cell (LedgerError if not)."""
        tally = self._tally
        assert tally is not None
        day = self._local_day(when)
        for provision, n in counts.items():
            if n <= 0:
                continue
            key = (day, provision, verifier)
            slot = tally.slots.get(key)
            if slot is None:
                try:
                    slot = tally.allocate(key, _count_key(day, provision, verifier))
                except (CellsFull, OSError, lmdb.Error, ValueError) as exc:
                    raise LedgerError(f"cannot record the provision in {self.path}: {exc}") from exc
            adds.append((slot, n))

    def _count(self, adds: list[tuple[int, int]], disclosures: Sequence[Disclosure]) -> None:
        if disclosures:
            # On disk before anything is counted: a crash between leaves the audit of a
            # disclosure that was neither counted nor answered, never the reverse.
            self._write(Counter(), disclosures)
        tally = self._tally
        assert tally is not None
        try:
            for slot, n in adds:
                tally.add(slot, n)
        except ValueError:
            raise _closed() from None

    def _write(self, totals: Mapping[bytes, int], disclosures: Sequence[Disclosure]) -> None:
        """Counts and disclosures in one write transaction; disclosures forced to disk."""
        if self._closed:
            raise _closed()
        with self._lock:
            first = self._serial + 1
            self._serial += len(disclosures)
        try:
            with self._env.begin(write=True) as txn:
                for key, n in totals.items():
                    raw = txn.get(key, db=self._counts)
                    total = (0 if raw is None else int.from_bytes(raw, "big")) + n
                    txn.put(key, total.to_bytes(_COUNT, "big"), db=self._counts)
                for serial, disclosure in enumerate(disclosures, first):
                    txn.put(
                        _audit_key(disclosure.time, serial),
                        json.dumps(disclosure.to_json(), ensure_ascii=False).encode(),
                        db=self._audit,
                    )
            if disclosures:
                self._env.sync(True)
        except lmdb.Error as exc:
            raise LedgerError(f"cannot record the provision in {self.path}: {exc}") from exc

    def sync(self) -> None:
        """Force every count and commit so far to disk."""
        if self._file is not None and self._tally is not None:
            self._file.cells.flush()
        self._env.sync(True)

    def counts(self, start: date, end: date) -> list[Count]:
        """Counts for the days start <= day < end, in key order (LMDB's and the cells')."""
        first, stop = start.isoformat().encode(), end.isoformat().encode()
        totals: Counter[bytes] = Counter()
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._counts)
            if cursor.set_range(first):
                for key, value in cursor:
                    if bytes(key) >= stop:
                        break
                    totals[bytes(key)] += int.from_bytes(value, "big")
            if self._file is not None:
                for key, n in cell_counts(txn, self._table, self._file, first):
                    if key >= stop:
                        break
                    totals[key] += n
        return [Count(*_parse_count_key(key), n) for key, n in sorted(totals.items()) if n > 0]

    def disclosures(
        self, start: datetime, end: datetime, verifier_id: str | None = None
    ) -> list[Disclosure]:
        """Disclosures with start <= time < end, oldest first, optionally of one verifier."""
        first = _audit_key(start, 0)[:8]
        stop = _audit_key(end, 0)[:8]
        out: list[Disclosure] = []
        with self._env.begin(db=self._audit) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(first):
                return out
            for key, value in cursor:
                if bytes(key[:8]) >= stop:
                    break
                disclosure = Disclosure.from_json(json.loads(bytes(value)))
                if verifier_id is None or disclosure.verifier_id == verifier_id:
                    out.append(disclosure)
        return out

    def purge(self, counts_before: date, audit_before: datetime) -> tuple[int, int]:
        """Delete counts of days before `counts_before` and disclosures before
        `audit_before` (保存期間 of the project's own records); how many of each."""
        stop = _audit_key(audit_before, 0)[:8]
        try:
            with self._env.begin(write=True) as txn:
                counts = _delete_below(txn.cursor(db=self._counts), counts_before.isoformat())
                audit = _delete_below(txn.cursor(db=self._audit), stop)
            if self._tally is not None:
                counts += self._tally.purge(counts_before.isoformat().encode())
        except lmdb.Error as exc:
            raise LedgerError(f"cannot purge {self.path}: {exc}") from exc
        return counts, audit

    def close(self) -> None:
        """Later records raise LedgerClosed."""
        self._closed = True
        self._release()
        self._env.close()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()  # unmapped: an add after it raises, never writes
            self._file = None
        if self._writer is not None:
            os.close(self._writer)  # releases the writer lock
            self._writer = None


def _delete_below(cursor: lmdb.Cursor, stop: str | bytes) -> int:
    """Delete every key below `stop` (keys sort by day or time first); how many."""
    limit = stop.encode() if isinstance(stop, str) else stop
    doomed = []
    for key in cursor.iternext(values=False):
        if bytes(key) >= limit:
            break
        doomed.append(bytes(key))
    for key in doomed:
        cursor.set_key(key)
        cursor.delete()
    return len(doomed)


_WRITER_LOCK = "writer.lock"
_SHARD_PREFIX = "worker-"


def _hold_writer_lock(path: Path) -> int:
    """An open descriptor holding an exclusive flock on the shard's lock file.

    flock, not LMDB's lock: LMDB lets any number of processes write one environment,
    and the kernel drops a flock when its holder dies, so a killed worker's
    replacement takes the shard back without anyone cleaning up.
    """
    fd = os.open(path / _WRITER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ShardInUse(f"{path} is written by another live process") from None
    except OSError:
        os.close(fd)
        raise
    return fd


def shard_path(root: Path, slot: int) -> Path:
    """The shard the worker in `slot` (0..workers-1) writes under the ledger directory."""
    if slot < 0:
        raise ValueError(f"worker slot {slot} is negative")
    return root / f"{_SHARD_PREFIX}{slot}"


def open_shard(root: Path, slot: int, *, map_size: int = _MAP_SIZE, cells: int = CELLS) -> Ledger:
    """The ledger a responder worker writes, held as its own until close().

    Answers are counted in the shard's counter cells; LMDB (with `writemap`, a
    commit without a system call) keeps the cell table and the audit trail.
    """
    return Ledger(
        shard_path(root, slot), exclusive=True, map_size=map_size, writemap=True, cells=cells
    )


def claim_shards(root: Path, slots: int) -> None:
    """Raise ShardInUse when a live process writes one of the first `slots` shards.

    A supervisor's check before it starts its workers (a second responder on the same
    state directory), so the refusal is one clear error, not workers dying at start.
    """
    for slot in range(slots):
        path = shard_path(root, slot)
        try:
            private_dir(path)
            os.close(_hold_writer_lock(path))
        except OSError as exc:
            raise LedgerError(f"cannot open the provision ledger {path}: {exc}") from None


def ledger_paths(root: Path) -> list[Path]:
    """Every environment a ledger directory holds: itself (the signer's ledger, or a
    responder's written before shards) and each worker shard, in a stable order."""
    paths = [root] if (root / "data.mdb").is_file() else []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        shards = [
            p
            for p in root.iterdir()
            if p.name.startswith(_SHARD_PREFIX) and (p / "data.mdb").is_file()
        ]
        paths.extend(sorted(shards, key=lambda p: (len(p.name), p.name)))
    return paths


class LedgerReader(Protocol):
    """What a report reads: a Ledger or a LedgerSet."""

    def counts(self, start: date, end: date) -> list[Count]: ...

    def disclosures(
        self, start: datetime, end: datetime, verifier_id: str | None = None
    ) -> list[Disclosure]: ...


class LedgerSet:
    """Every environment of a ledger directory, read as one ledger (read-only).

    Counts of the same day, kind and verifier are summed over the shards; the audit
    trail is merged in time order. Open it after the writers' fork, like a Ledger.
    """

    def __init__(self, root: Path) -> None:
        paths = ledger_paths(root)
        if not paths:
            raise LedgerError(f"{root} holds no provision ledger")
        self.path = root
        self._ledgers: list[Ledger] = []
        try:
            for path in paths:
                self._ledgers.append(Ledger(path, readonly=True))
        except LedgerError:
            self.close()
            raise

    @property
    def paths(self) -> list[Path]:
        return [ledger.path for ledger in self._ledgers]

    def counts(self, start: date, end: date) -> list[Count]:
        """As `Ledger.counts`, each key's count summed over the shards."""
        totals: Counter[tuple[date, str, str]] = Counter()
        for ledger in self._ledgers:
            for c in ledger.counts(start, end):
                totals[(c.day, c.provision.name, c.verifier_id)] += c.count
        return [
            Count(day, Provision[provision], verifier_id, n)
            for (day, provision, verifier_id), n in sorted(totals.items())
        ]

    def disclosures(
        self, start: datetime, end: datetime, verifier_id: str | None = None
    ) -> list[Disclosure]:
        """As `Ledger.disclosures`, over every shard, oldest first."""
        each = [ledger.disclosures(start, end, verifier_id) for ledger in self._ledgers]
        return list(heapq.merge(*each, key=lambda d: d.time))

    def close(self) -> None:
        for ledger in self._ledgers:
            ledger.close()
        self._ledgers = []

    def __enter__(self) -> LedgerSet:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


#: The file that marks a ledger directory as the signer's: a report needs one, for the
#: verifier tokens only the signer counts (第38条の3).
SIGNER_MARK = "signer-ledger"


def mark_signer_ledger(root: Path) -> None:
    """Mark `root` as the signer's ledger (idempotent; the signer does it at start)."""
    mark = root / SIGNER_MARK
    if not mark.is_file():
        write_private(mark, "the signer's provision ledger (verifier tokens, 第38条の3)\n".encode())


def is_signer_ledger(root: Path) -> bool:
    return (root / SIGNER_MARK).is_file()


def read_ledgers(root: Path) -> LedgerSet:
    """The ledger directory `root` for reading: every shard in it, summed."""
    return LedgerSet(root)
