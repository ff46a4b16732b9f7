"""Progress of a long operation (a full publish, an index build, a ceremony, the
bench's data): a bar redrawn in place on a terminal, a log line now and then otherwise.

A bar only where a person watches: stderr is a terminal and the process logs text
(app/logs.py puts the format in the environment). Anywhere else the progress is log
lines, in the process's log format: at each quarter and at least every
``LINE_SECONDS``, and one at the end. An operation over within ``QUIET_SECONDS``
shows nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Self, TextIO, TypeVar

#: The process's log format (``text`` or ``json``), set by app/logs.py.
LOG_FORMAT_ENV = "JPKI_VA_LOG_FORMAT"

log = logging.getLogger("jpki_va.progress")
T = TypeVar("T")


class Progress:
    WIDTH = 30
    REDRAW_SECONDS = 0.2
    LINE_SECONDS = 10.0
    #: An operation done sooner shows nothing: small snapshots, tests, a reused demo.
    QUIET_SECONDS = 2.0

    def __init__(
        self, label: str, total: int | None = None, *, stream: TextIO | None = None
    ) -> None:
        self._label = label
        self._total = None if total is None else max(total, 1)
        self._done = 0
        self._stream = stream or sys.stderr
        self._bar = self._stream.isatty() and os.environ.get(LOG_FORMAT_ENV, "text") == "text"
        self._start = time.monotonic()
        self._drawn = self._start
        self._next_quarter = 25
        self._shown = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        elif self._bar and self._shown:
            self._stream.write("\n")  # the error that follows starts on a line of its own

    def finish(self) -> None:
        """The operation is complete: the last bar, or the closing line."""
        if self._total is not None:
            self._done = max(self._done, self._total)
        if self._shown or time.monotonic() - self._start >= self.QUIET_SECONDS:
            self._draw(final=True)

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, counted as they pass."""
        for item in items:
            yield item
            self.advance()

    def advance(self, n: int = 1) -> None:
        self._done += n
        now = time.monotonic()
        if now - self._start < self.QUIET_SECONDS:
            return
        if self._bar:
            if now - self._drawn >= self.REDRAW_SECONDS:
                self._draw()
            return
        if self._quarter_passed() or now - self._drawn >= self.LINE_SECONDS:
            self._draw()
            while self._quarter_passed():
                self._next_quarter += 25

    def _quarter_passed(self) -> bool:
        total = self._total
        return (
            total is not None
            and self._next_quarter < 100
            and self._done * 100 >= self._next_quarter * total
        )

    def _draw(self, *, final: bool = False) -> None:
        self._shown = True
        self._drawn = time.monotonic()
        elapsed = self._drawn - self._start
        rate = self._done / elapsed if elapsed > 0 else 0.0
        if self._total is None:
            text = f"{self._label}: {self._done:,} {rate:,.0f}/s {elapsed:.1f}s"
            bar = f"{self._label:<22} {self._done:>12,} {rate:>12,.0f}/s {elapsed:7.1f}s"
        else:
            fraction = min(self._done / self._total, 1.0)
            eta = (self._total - self._done) / rate if rate > 0 and not final else 0.0
            text = (
                f"{self._label}: {self._done:,} of {self._total:,} ({fraction:.0%}), "
                f"{rate:,.0f}/s, {elapsed:.1f}s" + ("" if final else f", eta {eta:.0f}s")
            )
            filled = int(fraction * self.WIDTH)
            bar = (
                f"{self._label:<22} [{'#' * filled}{'-' * (self.WIDTH - filled)}] "
                f"{fraction:6.1%} {self._done:>12,}/{self._total:,} {rate:>12,.0f}/s "
                f"{elapsed:7.1f}s" + ("" if final else f" eta {eta:6.1f}s")
            )
        if self._bar:
            self._stream.write("\r" + bar + ("\n" if final else ""))
            self._stream.flush()
        else:
            log.info("%s%s", text, " (done)" if final else "")
