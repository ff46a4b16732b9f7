"""Whether snapshots reach the responders: the last publish, and the failures since.

A change is durable once its registry transaction commits, but responders learn it
only from a snapshot. While publishing fails (the HSM unavailable, the disk full)
every change waits and responders keep answering the old status; this is what the
signer's replies, metrics, health and log say about it. The log says it once when
publishing starts failing (or fails differently) and once when it recovers, not at
every periodic attempt.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from jpki_va import hsm
from jpki_va.core.clock import Clock
from jpki_va.server.snapshot.store import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishState:
    """What a caller is told about publishing with its change."""

    failing: bool
    error: str | None = None  # why publishing fails (or the snapshot key cannot be used)
    failures: int = 0  # publishes failed in a row
    last_published: datetime | None = None  # None: never


class PublishObserver(Protocol):
    def published(self) -> None:
        """A snapshot was published."""

    def publish_failed(self, cause: str) -> None:
        """A publish failed; ``cause`` is "hsm", "store" or "other" (a low-cardinality
        label)."""


class PublishStatus:
    """The outcomes of publishes, periodic and requested, as one running account."""

    def __init__(
        self,
        clock: Clock,
        last_published: datetime | None,
        observer: PublishObserver | None = None,
    ) -> None:
        self._clock = clock
        self._observer = observer
        self._lock = threading.Lock()
        self._state = PublishState(failing=False, last_published=last_published)
        self._kind: str | None = None  # the class of the failure last logged

    def state(self) -> PublishState:
        with self._lock:
            return self._state

    def age(self) -> float:
        """Seconds since the last snapshot was published (NaN: never)."""
        last = self.state().last_published
        return float("nan") if last is None else (self._clock.now() - last).total_seconds()

    def succeeded(self, at: datetime) -> None:
        with self._lock:
            before = self._state
            self._state = PublishState(failing=False, last_published=at)
        if before.failing:
            log.warning("publishing recovered after %d failed attempts", before.failures)
        if self._observer is not None:
            self._observer.published()

    def failed(self, exc: BaseException) -> None:
        error = str(exc) or type(exc).__name__
        known = isinstance(exc, hsm.HsmError | StoreUnavailable)
        kind = type(exc).__qualname__
        with self._lock:
            before = self._state
            self._state = PublishState(
                failing=True,
                error=error,
                failures=before.failures + 1,
                last_published=before.last_published,
            )
            # By class, not message: messages carry changing details ("next attempt in").
            changed, self._kind = not before.failing or self._kind != kind, kind
        if changed:
            # An unexpected failure gets its traceback once; an HSM one needs none.
            log.error(
                "publishing failed: %s; changes recorded from now on reach the responders "
                "only once a publish succeeds",
                error,
                exc_info=None if known else exc,
            )
        else:
            log.debug("publishing failed again (%d in a row): %s", before.failures + 1, error)
        if self._observer is not None:
            self._observer.publish_failed(
                "hsm"
                if isinstance(exc, hsm.HsmError)
                else "store"
                if isinstance(exc, StoreUnavailable)
                else "other"
            )
