"""The loss-of-effect feed: events from the live index, from a sequence number on.

Events carry the registry's sequence numbers, which run on across full and delta
snapshots, so a watcher resumes from the `through` of the last batch it received
and gets exactly what follows: nothing missed, nothing twice. `through` also
covers events of kinds the watcher does not receive, so it always advances.

Only retention takes events out of the index, and only those of certificates whose
validity period has ended as well (law/retention.py: a loss is kept at least until
its certificate expires): a watcher that was away longer misses nothing it could
still need, so an old `since` is served, never refused.

An issuer compromise is one fact per generation, not an event per certificate
(law/issuer_compromise.py): the feed sends every compromise it knows in the first
batch of each watch, and new ones once, when they appear.

Each watch holds a worker thread while it waits, so a worker takes at most
`max_watches` at once; the others get TooManyWatches and retry elsewhere.

A watch lives longer than the registry entry it was admitted with: before every
batch (every poll, so at every registry change too) the watcher is identified
again. Events of a kind it may no longer receive are neither sent nor counted; a
watcher no longer entitled to any kind it watches, or no longer registered, gets
the refusal (NotEntitled, or whatever `who` raises) and the watch ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from jpki_va.core.domain import CertKind, Provision, Verifier
from jpki_va.server.law.entitlements import NotEntitled, check_entitled, status_provision
from jpki_va.server.law.issuer_compromise import Compromise
from jpki_va.server.model.registry_values import LossEvent
from jpki_va.server.responder.status import BadRequest, IndexHolder

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how soon a published delta reaches a watcher
HEARTBEAT_SECONDS = 30.0  # a batch without events at least this often keeps proxies open
BATCH_LIMIT = 1000
MAX_SEQUENCE = 1 << 63  # the index keys events by 8-byte sequence numbers


class TooManyWatches(Exception):
    """This worker already serves as many watches as it may."""


class FeedClosed(Exception):
    """The responder is shutting down; the message says where to resume."""


@dataclass(frozen=True)
class FeedBatch:
    events: tuple[LossEvent, ...]
    through: int  # every requested event up to here has been sent
    compromises: tuple[Compromise, ...]
    counts: Counter[Provision]  # status provisions the events are (第41条)


class RevocationFeed:
    def __init__(
        self,
        holder: IndexHolder,
        *,
        max_watches: int = 8,
        poll_seconds: float = POLL_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        batch_limit: int = BATCH_LIMIT,
    ) -> None:
        if max_watches < 1 or poll_seconds <= 0 or batch_limit < 1:
            raise ValueError("max_watches, poll_seconds and batch_limit must be positive")
        if heartbeat_seconds < poll_seconds:
            raise ValueError("heartbeat_seconds must not be shorter than poll_seconds")
        self._holder = holder
        self._slots = threading.BoundedSemaphore(max_watches)
        self._max = max_watches
        self._poll = poll_seconds
        self._heartbeat = heartbeat_seconds
        self._limit = batch_limit
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._open: set[threading.Event] = set()

    def close(self) -> None:
        """End every watch with FeedClosed at once; refuse new ones."""
        self._closing.set()
        with self._lock:
            for done in self._open:
                done.set()

    @staticmethod
    def kinds_for(verifier: Verifier, requested: Iterable[CertKind]) -> frozenset[CertKind]:
        """The kinds to send: those asked for (each must be allowed), or all allowed."""
        asked = frozenset(requested)
        for kind in asked:
            check_entitled(verifier, status_provision(kind))
        if asked:
            return asked
        allowed = frozenset(k for k in CertKind if _may_receive(verifier, k))
        if not allowed:
            raise NotEntitled(
                f"verifier {verifier.id!r} may not receive the status of any kind: missing role "
                "SIGNING_VERIFIER, GROUP_SIGNING_VERIFIER or AUTH_VERIFIER"
            )
        return allowed

    def watch(
        self,
        who: Callable[[], Verifier],
        since: int,
        requested: Iterable[CertKind] = (),
        done: threading.Event | None = None,
    ) -> Iterator[FeedBatch]:
        """Batches after `since` until `done` is set (the caller went away) or the feed
        closes. The caller sets `done` when the call ends, so its slot frees at once.

        `who` is the watcher as the verifier registry has it now (it raises when the
        watcher is no longer registered); it is asked before every batch.
        """
        if not 0 <= since < MAX_SEQUENCE:
            raise BadRequest(f"since must be 0 to {MAX_SEQUENCE - 1}, got {since}")
        kinds = self.kinds_for(who(), requested)
        done = done or threading.Event()
        if not self._slots.acquire(blocking=False):
            raise TooManyWatches(
                f"this responder worker already serves {self._max} watches; retry later"
            )
        with self._lock:
            self._open.add(done)
        try:
            if self._closing.is_set():
                raise FeedClosed(f"the responder is shutting down; resume with since={since}")
            yield from self._batches(who, since, kinds, done)
        finally:
            with self._lock:
                self._open.discard(done)
            self._slots.release()

    def _batches(
        self,
        who: Callable[[], Verifier],
        since: int,
        kinds: frozenset[CertKind],
        done: threading.Event,
    ) -> Iterator[FeedBatch]:
        announced: set[bytes] = set()
        first, last_sent = True, 0.0
        while not done.is_set():
            index = self._holder.get()
            events, through = index.event_batch(since, self._limit)
            # Asked after the read: the registry is then at least as new as the events,
            # so a delta that takes a role away also takes away its own events.
            kinds = _still_entitled(who(), kinds, since)
            full = len(events) == self._limit
            through = max(through, since)  # a replica behind this watcher never goes back
            wanted = tuple(e for e in events if e.kind in kinds)
            compromises = tuple(
                c
                for k, c in sorted(index.compromises.items())
                if k not in announced and c.kind in kinds
            )
            now = time.monotonic()
            quiet_too_long = now - last_sent > self._heartbeat
            if first or wanted or compromises or through > since or quiet_too_long:
                announced.update(c.key_id for c in compromises)
                counts = Counter(status_provision(e.kind) for e in wanted)
                yield FeedBatch(wanted, through, compromises, counts)
                first, last_sent, since = False, now, through
            if not full:
                done.wait(self._poll)  # a published delta shows within one poll
            if self._closing.is_set():
                raise FeedClosed(f"the responder is shutting down; resume with since={since}")


def _refusal(verifier: Verifier, kind: CertKind) -> NotEntitled | None:
    """Why `verifier` may not receive the status of `kind`, or None when it may."""
    try:
        check_entitled(verifier, status_provision(kind))
    except NotEntitled as exc:
        return exc
    return None


def _may_receive(verifier: Verifier, kind: CertKind) -> bool:
    return _refusal(verifier, kind) is None


def _still_entitled(
    verifier: Verifier, kinds: frozenset[CertKind], since: int
) -> frozenset[CertKind]:
    """The kinds of a watch that `verifier` may still receive; NotEntitled when none.

    A watch only narrows: a kind entitled later is not added, since the watch has
    already passed over its earlier events.
    """
    refused = {kind: why for kind in kinds if (why := _refusal(verifier, kind)) is not None}
    if not refused:
        return kinds
    if len(refused) == len(kinds):
        why = refused[min(refused)]
        raise NotEntitled(f"{why}; the watch ends, resume with since={since} once entitled")
    log.info(
        "the watch of verifier %s no longer sends %s: the registry took the role away",
        verifier.id,
        ", ".join(k.name for k in sorted(refused)),
    )
    return kinds - refused.keys()
