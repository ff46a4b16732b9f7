"""The bounded queue in front of HSM signing: back-pressure instead of a pile-up.

The token signs one request at a time through one shared session, so requests wait
for it. At most ``limit`` may wait; one more is refused at once, and one that waited
``max_wait`` seconds gives up. Either way the caller gets :class:`Overloaded` (gRPC
RESOURCE_EXHAUSTED) quickly, nothing was signed and nothing was written.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Overloaded(Exception):
    """The signing queue is full, or a request waited longer than allowed."""


class QueueObserver(Protocol):
    def queue_depth(self, waiting: int) -> None: ...

    def rejected(self, reason: str) -> None: ...


class _Quiet:
    def queue_depth(self, waiting: int) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass


class SigningQueue:
    def __init__(
        self,
        limit: int,
        max_wait: float,
        *,
        concurrency: int = 1,
        observer: QueueObserver | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("signing queue limit must be >= 1")
        if max_wait <= 0:
            raise ValueError("signing queue wait must be > 0 seconds")
        if concurrency < 1:
            raise ValueError("signing concurrency must be >= 1")
        self.limit = limit
        self.max_wait = max_wait
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._waiting = 0
        self._observer: QueueObserver = observer or _Quiet()

    @property
    def waiting(self) -> int:
        return self._waiting

    def _enter(self) -> None:
        with self._lock:
            if self._waiting >= self.limit:
                self._observer.rejected("full")
                raise Overloaded(
                    f"signing queue is full ({self._waiting} requests wait for the HSM); "
                    "retry later"
                )
            self._waiting += 1
            self._observer.queue_depth(self._waiting)

    def _leave(self) -> None:
        with self._lock:
            self._waiting -= 1
            self._observer.queue_depth(self._waiting)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold the HSM for one request's signatures; Overloaded if that cannot be soon."""
        self._enter()
        try:
            acquired = self._slots.acquire(timeout=self.max_wait)
        finally:
            self._leave()
        if not acquired:
            self._observer.rejected("timeout")
            raise Overloaded(f"waited {self.max_wait:g}s for the HSM; retry later")
        try:
            yield
        finally:
            self._slots.release()
