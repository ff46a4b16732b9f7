"""A progress bar on stderr: redrawn in place on a terminal, a line per step otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Self, TextIO


class Progress:
    WIDTH = 30
    REDRAW_SECONDS = 0.2

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None) -> None:
        self._label = label
        self._total = max(total, 1)
        self._done = 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._start = time.monotonic()
        self._drawn = 0.0
        self._next_percent = 25

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._done = self._total
            self._draw(final=True)

    def advance(self, n: int = 1) -> None:
        self._done += n
        now = time.monotonic()
        if self._tty and now - self._drawn >= self.REDRAW_SECONDS:
            self._draw()
        elif (
            not self._tty
            and self._next_percent < 100
            and self._done * 100 >= self._next_percent * self._total
        ):
            self._draw()
            self._next_percent += 25

    def _draw(self, *, final: bool = False) -> None:
        self._drawn = time.monotonic()
        elapsed = self._drawn - self._start
        fraction = min(self._done / self._total, 1.0)
        rate = self._done / elapsed if elapsed > 0 else 0.0
        eta = (self._total - self._done) / rate if rate > 0 and not final else 0.0
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        text = (
            f"{self._label:<22} [{bar}] {fraction:6.1%} {self._done:>12,}/{self._total:,}"
            f" {rate:>12,.0f}/s {elapsed:7.1f}s" + ("" if final else f" eta {eta:6.1f}s")
        )
        if self._tty:
            self._stream.write("\r" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
