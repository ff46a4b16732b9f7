"""A file of 8-byte counters (cells), mapped shared, that a count is added to in place.

The provision ledger counts an answer by adding to one cell (`slot_counts.py` gives
each count key its cell): the add lands in the kernel's page cache, shared by every
mapping of the file, so a process killed right after it loses nothing, and `flush`
(msync) forces it to disk. Cells hold native-endian unsigned 64-bit integers; the
file is made at its full size once, sparse, so the disk holds only the pages used
(`reserve` allocates a cell's page before the cell is used, so a full disk is an
error to refuse an answer with, not a SIGBUS on the next add).

The compiled twin (`_counter_cells.pyx`, built at install by setup.py) adds with one
atomic instruction and never releases the GIL; where it is not built, `PyCells`
serves: a lock and an in-place update of the mapping, the same counts
(tests/unit/server/ledger/test_counter_cells.py).
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Protocol

from jpki_va.server.base.private_files import FILE_MODE

CELL = 8
_FORMAT = struct.Struct("=Q")
_MASK = (1 << 64) - 1


class Cells(Protocol):
    """The counters of a mapped file, by slot (0 .. capacity-1)."""

    def add(self, slot: int, n: int) -> None: ...
    def get(self, slot: int) -> int: ...
    def put(self, slot: int, value: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class PyCells:
    """The pure-Python cells: `mmap` and a lock around each read-modify-write."""

    def __init__(self, fd: int, capacity: int, writable: bool) -> None:
        if capacity < 1:
            raise ValueError("a counter file holds at least one cell")
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        self._map = mmap.mmap(fd, capacity * CELL, access=access)
        self._capacity = capacity
        self._writable = writable
        self._lock = threading.Lock()

    def _offset(self, slot: int) -> int:
        if not 0 <= slot < self._capacity:
            raise IndexError(f"cell {slot} is outside the counter file")
        return slot * CELL

    def _writable_offset(self, slot: int) -> int:
        if not self._writable:
            raise ValueError("the counter file is mapped read-only")
        return self._offset(slot)

    def add(self, slot: int, n: int) -> None:
        offset = self._writable_offset(slot)
        with self._lock:
            (value,) = _FORMAT.unpack_from(self._map, offset)
            _FORMAT.pack_into(self._map, offset, (value + n) & _MASK)

    def get(self, slot: int) -> int:
        value: int = _FORMAT.unpack_from(self._map, self._offset(slot))[0]
        return value

    def put(self, slot: int, value: int) -> None:
        offset = self._writable_offset(slot)
        with self._lock:
            _FORMAT.pack_into(self._map, offset, value)

    def flush(self) -> None:
        if self._writable:
            self._map.flush()

    def close(self) -> None:
        self._map.close()


try:
    from jpki_va.server.ledger._counter_cells import Cells as _CompiledCells
except ImportError:  # no compiler at install: the Python cells serve
    _CompiledCells = None  # type: ignore[assignment,misc]

COMPILED = _CompiledCells is not None


class CounterFile:
    """The counter file of a ledger shard: made 0600 at `capacity` cells, sparse.

    `compiled=False` takes the pure-Python cells even where the compiled ones exist
    (the tests compare the two).
    """

    def __init__(
        self, path: Path, capacity: int, *, writable: bool, compiled: bool = COMPILED
    ) -> None:
        flags = (os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY) | os.O_CLOEXEC
        self._fd = os.open(path, flags, FILE_MODE)
        try:
            size = os.fstat(self._fd).st_size
            if writable and size < capacity * CELL:
                os.ftruncate(self._fd, capacity * CELL)  # sparse: no disk until used
                size = capacity * CELL
            self.capacity = size // CELL
            if self.capacity < 1:
                raise OSError(f"{path} holds no counter cell")
            make = _CompiledCells if compiled and _CompiledCells is not None else PyCells
            self.cells: Cells = make(self._fd, self.capacity, writable)
        except BaseException:
            os.close(self._fd)
            raise
        self.path = path

    def reserve(self, slot: int) -> None:
        """Give the page of `slot` its disk blocks now (OSError, e.g. ENOSPC, if not)."""
        page = mmap.PAGESIZE
        os.posix_fallocate(self._fd, slot * CELL // page * page, page)

    def close(self) -> None:
        self.cells.close()
        os.close(self._fd)
