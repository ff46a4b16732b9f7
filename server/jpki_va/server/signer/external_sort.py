"""Fixed-width rows sorted in bounded memory: sorted runs in temporary files, one merge.

A full snapshot's links are tens of millions of rows at national scale; holding them
all as Python objects would cost gigabytes, so at most one run is in memory.
"""

from __future__ import annotations

import heapq
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

_READ_ROWS = 1 << 14  # rows per read when merging


class ExternalSort:
    """Collect rows of one width; iterate them once, sorted and without duplicates."""

    def __init__(self, row_size: int, *, run_rows: int = 1 << 20, directory: Path | None = None):
        if run_rows < 1:
            raise ValueError("a run holds at least one row")
        self._row_size = row_size
        self._run_rows = run_rows
        self._directory = directory
        self._run: list[bytes] = []
        self._files: list[IO[bytes]] = []
        self._spilled = 0

    def add(self, rows: Iterable[bytes]) -> None:
        run = self._run
        for row in rows:
            if len(row) != self._row_size:
                raise ValueError(f"row of {len(row)} bytes, expected {self._row_size}")
            run.append(row)
        if len(run) >= self._run_rows:
            self._spill()

    @property
    def runs(self) -> int:
        """How many sorted runs went to temporary files."""
        return self._spilled

    def _spill(self) -> None:
        self._run.sort()
        f = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 (closed by sorted_rows)
        self._files.append(f)
        self._spilled += 1
        f.write(b"".join(self._run))
        f.seek(0)
        self._run = []

    def _read(self, f: IO[bytes]) -> Iterator[bytes]:
        size = self._row_size
        while block := f.read(size * _READ_ROWS):
            for offset in range(0, len(block), size):
                yield block[offset : offset + size]

    def sorted_rows(self) -> Iterator[bytes]:
        """Every row added, in increasing byte order, each distinct row once."""
        try:
            if self._files:
                if self._run:
                    self._spill()
                source: Iterable[bytes] = heapq.merge(*(self._read(f) for f in self._files))
            else:
                self._run.sort()
                source, self._run = self._run, []
            previous = None
            for row in source:
                if row != previous:
                    yield row
                    previous = row
        finally:
            for f in self._files:
                f.close()
            self._files = []
