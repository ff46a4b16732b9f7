"""Refusals of bad input, logged so that no caller can flood the log with them.

A value the caller chose reaches a log line only bounded (`bounded`: cut to LIMIT
characters, anything unprintable escaped, so it can neither fill the disk nor forge
a line). A reason (a constant the code names, never something the caller sent) is
logged at most once per window: its first refusal with the detail, the others only
counted; the count is logged with the next one after the window, or by `flush`,
which the composition roots call now and then and when they stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Characters of a caller's value a log line keeps.
LIMIT = 64
#: Seconds in which a reason is logged at most once.
WINDOW = 10.0
#: Reasons tracked at once; past it (a caller-made reason would be a bug), one bucket.
MAX_REASONS = 64
OTHER = "other refusals"


def bounded(value: str | bytes, limit: int = LIMIT) -> str:
    """`value` cut to `limit` characters, unprintable ones escaped, with what was cut."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    kept = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return kept if len(text) <= limit else f"{kept}…(+{len(text) - limit} chars)"


@dataclass
class _Window:
    started: float
    level: int
    unlogged: int = 0


class RefusalLog:
    """Thread-safe: gRPC's threads and the HTTP event loop share one per process."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self._log = logger
        self._window = window
        self._clock = clock
        self._level = level
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def refused(
        self,
        reason: str,
        detail: str | bytes = "",
        *,
        level: int | None = None,
        limit: int = LIMIT,
    ) -> None:
        """One refusal: logged if it is the first of `reason` in its window, else counted.

        `level` (the log's own by default) and `limit` (characters of `detail` kept)
        let a server's own faults go through the same bound, at ERROR and with room
        for where they happened.
        """
        now = self._clock()
        level = self._level if level is None else level
        with self._lock:
            if reason not in self._windows and len(self._windows) >= MAX_REASONS:
                reason, detail = OTHER, f"{reason}: {bounded(detail, limit)}"
            window = self._windows.get(reason)
            if window is not None and now - window.started < self._window:
                window.unlogged += 1
                return
            self._windows[reason] = _Window(now, level)
        line = f"{reason}: {bounded(detail, limit)}" if detail else reason
        if window is not None and window.unlogged:
            line += f" ({self._more(window, now)})"
        self._log.log(level, "%s", line)

    def flush(self, *, final: bool = False) -> None:
        """Log the counts of windows that ended (all of them when `final`)."""
        now = self._clock()
        due = []
        with self._lock:
            for reason, window in list(self._windows.items()):
                if not final and now - window.started < self._window:
                    continue
                del self._windows[reason]  # the next refusal of it is logged at once
                if window.unlogged:
                    due.append((reason, window))
        for reason, window in due:
            self._log.log(window.level, "%s: %s", reason, self._more(window, now))

    @staticmethod
    def _more(window: _Window, now: float) -> str:
        return f"{window.unlogged} more in the last {now - window.started:.1f} s"
