"""Fixed-width rows sorted in bounded memory: sorted runs in temporary files, one merge.

A full snapshot's links are tens of millions of rows at national scale; holding them
all as Python objects would cost gigabytes, so at most one run is in memory.
"""

from __future__ import annotations

import tempfile
from bisect import bisect_right
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

    def _blocks(self, f: IO[bytes]) -> Iterator[list[bytes]]:
        size = self._row_size
        while block := f.read(size * _READ_ROWS):
            yield [block[offset : offset + size] for offset in range(0, len(block), size)]

    def _merged(self) -> Iterator[list[bytes]]:
        """The runs merged, as consecutive sorted chunks.

        Blockwise, so the per-row work stays in C: every row up to the smallest of the
        buffered blocks' last rows is in some buffer, so those rows, sorted together
        (Timsort merges the sorted pieces), come before anything still unread.
        """
        buffers: list[tuple[list[bytes], int, Iterator[list[bytes]]]] = []
        for f in self._files:
            blocks = self._blocks(f)
            if (first := next(blocks, None)) is not None:
                buffers.append((first, 0, blocks))
        while buffers:
            bound = min(rows[-1] for rows, _, _ in buffers)
            chunk: list[bytes] = []
            left = []
            for rows, start, blocks in buffers:
                end = bisect_right(rows, bound, start)
                chunk += rows[start:end]
                if end < len(rows):
                    left.append((rows, end, blocks))
                elif (more := next(blocks, None)) is not None:
                    left.append((more, 0, blocks))
            buffers = left
            chunk.sort()
            yield chunk

    def sorted_rows(self) -> Iterator[bytes]:
        """Every row added, in increasing byte order, each distinct row once."""
        try:
            if self._files:
                if self._run:
                    self._spill()
                chunks: Iterable[list[bytes]] = self._merged()
            else:
                self._run.sort()
                chunks, self._run = [self._run], []
            previous = None
            for chunk in chunks:
                for row in chunk:
                    if row != previous:
                        yield row
                        previous = row
        finally:
            for f in self._files:
                f.close()
            self._files = []
