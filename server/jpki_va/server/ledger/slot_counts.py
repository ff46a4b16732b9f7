"""The counts of a ledger shard: one counter cell per count key, added to per answer.

A count key (JST day, provision kind, verifier) gets a cell of the shard's counter
file (`counter_cells.py`) the first time it is counted, and keeps it; the key → cell
table is a database of the shard's LMDB environment. Keys are few and change daily,
so the table is written rarely, and an answer is counted by one add to its cell: no
write transaction, no lock and no thread hand-off per answer.

Durability and order, so that a crash never gives one key's count to another:
- a new cell is zeroed and the zero forced to disk (msync), then its table entry is
  committed and forced to disk (fsync), and only then is the cell added to;
- a purge deletes table entries and forces that to disk before zeroing their cells;
- so a cell no entry names may hold a stale value (a crash between the steps) and is
  zeroed again when it is given out.
A killed process loses no add (the page cache holds it); a machine crash loses the
adds since the last `flush`, as with the LMDB counts before.

Only the shard's one writer (it holds the shard's flock) allocates: the table is
read once at open and kept in memory.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Hashable, Iterator

import lmdb

from jpki_va.server.ledger.counter_cells import CounterFile

_SLOT = 8  # bytes of a big-endian cell number in the table


class CellsFull(Exception):
    """No cell is free for a new count key (or none can be given disk blocks)."""


def _slot(raw: bytes | memoryview) -> int:
    return int.from_bytes(raw, "big")


class SlotCounts:
    """Count keys → cells of `file`, the table in `table` of `env` (one writer)."""

    def __init__(self, env: lmdb.Environment, table: lmdb._Database, file: CounterFile) -> None:
        self._env = env
        self._table = table
        self.file = file
        self._cells = file.cells
        #: Add `n` to cell `slot`: the cells' own method, called with no frame of ours
        #: (one per answer counted, on the hot path of every call).
        self.add: Callable[[int, int], None] = file.cells.add
        self._lock = threading.Lock()  # allocations and purges, never an add
        #: key (as the caller names it) → cell; filled as keys are counted.
        self.slots: dict[Hashable, int] = {}
        self._by_raw: dict[bytes, int] = {}
        with env.begin(db=table) as txn:
            for raw, value in txn.cursor():
                self._by_raw[bytes(raw)] = _slot(value)
        used = set(self._by_raw.values())
        self._next = max(used, default=-1) + 1
        self._free = [slot for slot in range(self._next) if slot not in used]

    def allocate(self, key: Hashable, raw: bytes) -> int:
        """The cell of `key` (`raw`: its bytes in the table), given one if it has none.

        Raises CellsFull, OSError or lmdb.Error; then nothing has changed that a
        count reads.
        """
        with self._lock:
            slot = self._by_raw.get(raw)
            if slot is None:
                slot = self._new_cell(raw)
            self.slots[key] = slot
            return slot

    def _new_cell(self, raw: bytes) -> int:
        fresh = not self._free
        slot = self._next if fresh else self._free[0]
        if slot >= self.file.capacity:
            raise CellsFull(f"all {self.file.capacity} cells of {self.file.path} are in use")
        try:
            self.file.reserve(slot)
        except OSError as exc:
            raise CellsFull(f"no disk for a new cell of {self.file.path}: {exc}") from exc
        self._cells.put(slot, 0)
        self._cells.flush()
        with self._env.begin(write=True, db=self._table) as txn:
            txn.put(raw, slot.to_bytes(_SLOT, "big"))
        self._env.sync(True)
        if fresh:
            self._next += 1
        else:
            heapq.heappop(self._free)
        self._by_raw[raw] = slot
        return slot

    def purge(self, below: bytes) -> int:
        """Drop every key that sorts below `below` and free its cell; how many."""
        with self._lock:
            with self._env.begin(write=True, db=self._table) as txn:
                cursor = txn.cursor()
                doomed = []
                for raw, value in cursor:
                    if bytes(raw) >= below:
                        break
                    doomed.append((bytes(raw), _slot(value)))
                for raw, _ in doomed:
                    txn.delete(raw)
            if not doomed:
                return 0
            self._env.sync(True)
            freed = set()
            for raw, slot in doomed:
                del self._by_raw[raw]
                freed.add(slot)
                self._cells.put(slot, 0)
                heapq.heappush(self._free, slot)
            self.slots = {k: s for k, s in self.slots.items() if s not in freed}
            return len(doomed)


def cell_counts(
    txn: lmdb.Transaction, table: lmdb._Database, file: CounterFile, start: bytes
) -> Iterator[tuple[bytes, int]]:
    """(key, count) of every table entry from `start` on, in key order (a reader's view)."""
    cursor = txn.cursor(db=table)
    if not cursor.set_range(start):
        return
    for raw, value in cursor:
        yield bytes(raw), file.cells.get(_slot(value))
