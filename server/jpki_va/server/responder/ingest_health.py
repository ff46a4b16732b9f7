"""How ingesting fares: failures in a row, the pause before the next attempt, and what
the log, metrics and health say about it.

An index that cannot be built or updated (the disk full, say) is tried again after a
pause that doubles with each failure, up to a cap, instead of at every poll; the log
says so once when ingesting starts failing (or fails differently) and once when it
recovers, not at every attempt. The last good index keeps serving meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from jpki_va.server.responder.storage import NoSpace, free_bytes

log = logging.getLogger(__name__)

RETRY_CAP = 60.0  # seconds: the longest pause between attempts


@dataclass(frozen=True)
class IngestCondition:
    """Whether the last attempt to ingest failed, why, and when the next one is."""

    failing: bool = False
    no_space: bool = False
    error: str | None = None
    failures: int = 0  # in a row
    retry_in: float = 0.0  # the pause after the last failure


class IngestHealth(Collector):
    """The account of ingest attempts; a Prometheus collector of it as well."""

    def __init__(
        self,
        directory: Path,
        retry_base: float,
        *,
        retry_cap: float = RETRY_CAP,
        on_change: Callable[[IngestCondition], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory
        self._base = retry_base
        self._cap = max(retry_cap, retry_base)
        self._on_change = on_change
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._condition = IngestCondition()
        self._retry_at = 0.0
        self._total = 0
        self._kind: str | None = None  # the class of the failure last logged

    @property
    def condition(self) -> IngestCondition:
        with self._lock:
            return self._condition

    def due(self) -> bool:
        """Whether an attempt may be made now (False while pausing after a failure)."""
        return self._monotonic() >= self._retry_at

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            before = self._condition
            failures = before.failures + 1
            pause = min(self._cap, self._base * 2 ** (failures - 1))
            now = self._condition = IngestCondition(
                failing=True,
                no_space=isinstance(exc, NoSpace),
                error=str(exc) or type(exc).__name__,
                failures=failures,
                retry_in=pause,
            )
            self._retry_at = self._monotonic() + pause
            self._total += 1
            # By class, not message: messages carry changing details (bytes free).
            kind = type(exc).__qualname__
            changed, self._kind = not before.failing or self._kind != kind, kind
        if changed:
            # A known condition needs no traceback; an unexpected one gets it once.
            log.error(
                "index update failed: %s; the last good index keeps serving; next attempt "
                "in %gs, the pause doubling up to %gs",
                now.error,
                pause,
                self._cap,
                exc_info=None if isinstance(exc, NoSpace) else exc,
            )
            self._changed()
        else:
            log.debug("index update failed again (%d in a row): %s", failures, exc)

    def succeeded(self) -> None:
        with self._lock:
            before = self._condition
            if not before.failing:
                return
            self._condition = IngestCondition()
            self._retry_at = 0.0
            self._kind = None
        log.warning("index updates recovered after %d failed attempts", before.failures)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.condition)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            condition, total = self._condition, self._total
        yield GaugeMetricFamily(
            "jpki_va_ingest_failing",
            "1 while snapshots cannot be ingested; the last good index keeps serving.",
            int(condition.failing),
        )
        yield GaugeMetricFamily(
            "jpki_va_ingest_no_space",
            "1 while ingesting fails for want of disk space (or LMDB map space).",
            int(condition.no_space),
        )
        yield GaugeMetricFamily(
            "jpki_va_ingest_consecutive_failures",
            "Ingest attempts failed in a row.",
            condition.failures,
        )
        yield GaugeMetricFamily(
            "jpki_va_ingest_retry_seconds",
            "The pause before the next ingest attempt (0 while ingesting works).",
            condition.retry_in,
        )
        yield CounterMetricFamily("jpki_va_ingest_failures", "Ingest attempts that failed.", total)
        try:
            free = float(free_bytes(self._directory))
        except OSError:
            return
        yield GaugeMetricFamily(
            "jpki_va_index_free_bytes",
            "Free bytes on the file system of the index directory.",
            free,
        )
