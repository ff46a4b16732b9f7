"""Signed OCSP responses, kept so that a hot certificate is not re-signed per request.

Keyed by the request's requestList bytes (its CertIDs): everything a nonce-less
answer depends on besides the index, the signing key and the clock. An entry is
dropped when the index sequence changes (the status may have changed), when the
delegated signer is replaced (`invalidate`: answers come from the new key) and
when the response nears its nextUpdate (clients must get a fresh one in time).
Per worker, bounded (LRU).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OcspReply:
    """A DER OCSPResponse and what HTTP caching needs to know about it."""

    der: bytes
    cacheable: bool = False  # signed and without a nonce: the same for every client
    this_update: float = 0.0  # epoch seconds; the latest thisUpdate of its answers
    next_update: float = 0.0  # epoch seconds; the earliest nextUpdate of its answers
    etag: str = ""
    answers: tuple[tuple[str, str], ...] = ()  # (status, cause) per CertID, for metrics

    @property
    def successful(self) -> bool:
        """Whether it carries status information (error statuses carry no answers)."""
        return bool(self.answers)


class ResponseCache:
    def __init__(
        self,
        generation: Callable[[], int],
        *,
        capacity: int = 100_000,
        refresh_margin: float = 60.0,
        refresh_fraction: float = 0.1,
    ) -> None:
        if capacity < 0:
            raise ValueError("cache capacity must be >= 0")
        if refresh_margin < 0 or not 0 <= refresh_fraction < 1:
            raise ValueError("refresh margin must be >= 0 and fraction in [0, 1)")
        self._generation = generation
        self._capacity = capacity
        self._margin = refresh_margin
        self._fraction = refresh_fraction
        self._entries: OrderedDict[bytes, tuple[OcspReply, float]] = OrderedDict()
        self._current: tuple[int, int] = (-1, 0)  # (index generation, signer epoch)
        self._epoch = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def generation(self) -> tuple[int, int]:
        """What answers depend on now; the whole cache is dropped when it moved."""
        generation = (self._generation(), self._epoch)
        if generation != self._current:
            with self._lock:
                self._entries.clear()
                self._current = generation
        return generation

    def invalidate(self) -> None:
        """Drop everything and refuse answers signed before now (a new signer)."""
        with self._lock:
            self._epoch += 1
            self._entries.clear()

    def get(self, key: bytes, now: float) -> OcspReply | None:
        self.generation()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now >= entry[1]:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: bytes, reply: OcspReply, generation: tuple[int, int]) -> None:
        """Keep `reply`, signed at `generation`, until it must be refreshed."""
        if not reply.cacheable or self._capacity == 0:
            return
        life = reply.next_update - reply.this_update
        refresh_at = reply.next_update - max(self._margin, life * self._fraction)
        with self._lock:
            if generation != self._current or generation[1] != self._epoch:
                return  # the index or the signer moved while this was being signed
            self._entries[key] = (reply, refresh_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
