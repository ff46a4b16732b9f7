"""Signed OCSP responses, kept so that a hot certificate is not re-signed per request.

Keyed by the request's DER bytes as they came (a request with a nonce is never
kept): a hit needs no parsed request, so a client repeating a request costs one
lookup, and no memo of parsed requests is kept beside this budget. Beside the reply
an entry keeps the issuer of each of its CertIDs, which is what the gate checks
(`GatedOcsp`). The answer depends on nothing else of the request but its CertIDs,
so two encodings of one request are two entries of one answer. Everything is
dropped when a new full index is served or the delegated signer is replaced
(`invalidate`: answers come from the new key). A delta keeps the entries: the first
request for one after a delta recomputes its statuses from the index (cheap beside a
signature) and reuses the signed answer only if they are what it says, so a
certificate the delta touched is answered afresh and the others are not re-signed.
Before this, every delta (one a second under load) emptied the cache and every
request was signed again. An entry also goes when the response nears its nextUpdate
(clients must get a fresh one in time).

Per worker, bounded by bytes (LRU): a budget in bytes is what an operator can set
against a worker's memory, where a count of entries is not (a response's size
depends on its CertIDs and the delegated certificate it carries). An entry is
charged its two byte strings and `ENTRY_OVERHEAD` for the objects around them,
measured with tracemalloc (tests/unit/server/responder/test_ocsp_cache.py holds
the charge to it). A signed reply is kept without the delegated signer's certificate
that ends it (`OcspReply.certs`, one bytes object per signer shared by every reply):
≈ 720 of its ≈ 1,050 bytes, repeated in every entry before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from jpki_va.server.responder.index_reader import IssuerEntry

#: Bytes an entry costs beyond the lengths of its key and its DER: the two bytes
#: objects' headers, the OcspReply with its ETag string and label tuples, the entry
#: with its float and issuers, and the OrderedDict's slot and link (≈ 620 measured
#: on CPython 3.11, rounded up so the budget is never exceeded).
ENTRY_OVERHEAD = 650

#: The default budget per worker: 32 MiB. An idle worker holds ≈ 53 MB of private
#: memory of its own, and the goal for a loaded one is 100 MB with room: full, the
#: cache brings it to ≈ 87 MB, and nothing else of OCSP grows with the answers served
#: (no parsed requests kept, no HTTP head per answer). A one-CertID response is kept
#: as ≈ 330 bytes (its certificate shared), charged ≈ 1.06 kB with its key, so 32 MiB
#: keeps ≈ 31,000 of them: the bench's hot set (20,000 distinct requests) with room.
#: An LRU smaller than a hot set that is read in turn misses on every request, so
#: less is not safer. A miss is signed again (≈ 60-110 µs of CPU), not refused.
DEFAULT_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class OcspReply:
    """A DER OCSPResponse (`body` then `certs`) and what HTTP caching needs to know."""

    # The response up to its certs field: all of it when `certs` is empty. The certs
    # field (the delegated certificate) is last in the DER, so the lengths in `body`
    # already count it and the two side by side are the response.
    body: bytes
    cacheable: bool = False  # signed and without a nonce: the same for every client
    this_update: float = 0.0  # epoch seconds; the latest thisUpdate of its answers
    next_update: float = 0.0  # epoch seconds; the earliest nextUpdate of its answers
    etag: str = ""
    answers: tuple[tuple[str, str], ...] = ()  # (status, cause) per CertID, for metrics
    # What the answers say (per CertID), compared after a delta with what they would
    # say now: equal means the signed response is still true.
    basis: tuple[object, ...] = ()
    certs: bytes = b""  # the delegated signer's certs field: one object, shared

    @property
    def der(self) -> bytes:
        """The whole DER response (a new bytes object when `certs` is split off)."""
        return self.body + self.certs if self.certs else self.body

    @property
    def successful(self) -> bool:
        """Whether it carries status information (error statuses carry no answers)."""
        return bool(self.answers)


class Kept(NamedTuple):
    """A cache entry: the reply, and what a hit needs besides it."""

    reply: OcspReply
    refresh_at: float  # epoch seconds: dropped from then on
    checked: int  # the index sequence its statuses were last checked at
    issuers: tuple[IssuerEntry, ...]  # each CertID's, in order: what the gate checks


#: What a kept reply would say now, for a request (its key) of these issuers.
Basis = Callable[[bytes, "tuple[IssuerEntry, ...]"], tuple[object, ...]]


class Generation(NamedTuple):
    """What the cached answers were checked against."""

    full: int  # the full snapshot the index was built from: a new one drops everything
    sequence: int  # the last snapshot applied to it (a delta's: entries are rechecked)
    epoch: int  # the delegated signer's: a new one drops everything


#: For a responder without a cache.
NO_GENERATION = Generation(0, 0, 0)


class ResponseCache:
    def __init__(
        self,
        index: Callable[[], tuple[int, int]],
        *,
        max_bytes: int = DEFAULT_BYTES,
        refresh_margin: float = 60.0,
        refresh_fraction: float = 0.1,
    ) -> None:
        """`index`: the (full sequence, sequence) of the index answers come from now;
        `max_bytes`: what the entries may cost in all (0: keep nothing)."""
        if max_bytes < 0:
            raise ValueError("cache max_bytes must be >= 0")
        if refresh_margin < 0 or not 0 <= refresh_fraction < 1:
            raise ValueError("refresh margin must be >= 0 and fraction in [0, 1)")
        self._index = index
        self._max_bytes = max_bytes
        self._bytes = 0  # what the entries cost now (entry_cost each)
        self._margin = refresh_margin
        self._fraction = refresh_fraction
        self._entries: OrderedDict[bytes, Kept] = OrderedDict()
        self._current = Generation(-1, -1, 0)
        self._epoch = 0
        self._lock = threading.Lock()
        self._turn = threading.local()  # .generation: what `hold_generation` read

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_kept(self) -> int:
        """What the kept entries cost, by `entry_cost`: never over the budget."""
        return self._bytes

    def _clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: bytes) -> None:
        self._bytes -= entry_cost(key, self._entries.pop(key).reply)

    def hold_generation(self) -> None:
        """Read the index's generation once for what this thread answers until
        `release_generation`: one event-loop turn of HTTP requests, which all arrived
        before it began, so the state read then is as fresh as each of them. Other
        threads (gRPC's) read it per call as before."""
        self._turn.generation = None  # held only once read: an error holds nothing
        self._turn.generation = self._read_generation()

    def release_generation(self) -> None:
        self._turn.generation = None

    def generation(self) -> Generation:
        """What answers depend on now; everything is dropped when the full index or
        the signer moved."""
        held: Generation | None = getattr(self._turn, "generation", None)
        return self._read_generation() if held is None else held

    def _read_generation(self) -> Generation:
        full, sequence = self._index()
        current = self._current
        if full == current.full and sequence == current.sequence and self._epoch == current.epoch:
            return current  # the usual case: no tuple made (a NamedTuple's is a Python call)
        generation = Generation(full, sequence, self._epoch)
        if generation != self._current:
            with self._lock:
                if (full, self._epoch) != (self._current.full, self._current.epoch):
                    self._clear()
                self._current = generation
        return generation

    def invalidate(self) -> None:
        """Drop everything and refuse answers signed before now (a new signer)."""
        with self._lock:
            self._epoch += 1
            self._clear()

    def get(self, key: bytes, now: float, basis: Basis | None = None) -> Kept | None:
        """The entry for `key`, if its reply is still good at `now`.

        A reply kept from before the last delta is returned only when `basis(key,
        issuers)` (what its answers would say now) equals the reply's basis; without
        `basis`, never.
        """
        # A miss reads no generation (the answer's path reads it next): most requests
        # of a large population miss. Unlocked, so racy, harmlessly: an entry put
        # meanwhile is missed once; one dropped meanwhile is looked for again below.
        if key not in self._entries:
            return None
        generation = self.generation()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now >= entry.refresh_at:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            if entry.checked == generation.sequence:
                return entry
        # Outside the lock: it reads the index, and other requests go on meanwhile.
        reply = entry.reply
        still_true = (
            basis is not None and bool(reply.basis) and basis(key, entry.issuers) == reply.basis
        )
        if not still_true:
            with self._lock:
                if self._entries.get(key) is entry:
                    self._drop(key)
            return None
        checked = entry._replace(checked=generation.sequence)
        with self._lock:
            # Unless replaced or dropped meanwhile, or the index moved on again.
            if self._entries.get(key) is entry and generation == self._current:
                self._entries[key] = checked
        return checked

    def put(
        self,
        key: bytes,
        reply: OcspReply,
        generation: Generation,
        issuers: tuple[IssuerEntry, ...] = (),
    ) -> None:
        """Keep `reply` to the request `key` (its CertIDs' `issuers`), signed at
        `generation` (or later), until it must be refreshed."""
        cost = entry_cost(key, reply)
        if not reply.cacheable or cost > self._max_bytes:
            return
        life = reply.next_update - reply.this_update
        refresh_at = reply.next_update - max(self._margin, life * self._fraction)
        with self._lock:
            current = self._current
            if (generation.full, generation.epoch) != (current.full, self._epoch):
                return  # a new index or signer came while this was being signed
            # Its statuses were read at `generation` or later: checked again after the
            # next delta, like every other entry.
            if key in self._entries:
                self._drop(key)
            self._entries[key] = Kept(reply, refresh_at, generation.sequence, issuers)
            self._bytes += cost
            while self._bytes > self._max_bytes:
                old, dropped = self._entries.popitem(last=False)
                self._bytes -= entry_cost(old, dropped.reply)


def entry_cost(key: bytes, reply: OcspReply) -> int:
    """What keeping `reply` under `key` costs, in bytes of memory (its `certs` is
    shared by every reply of its signer: charged to none)."""
    return len(key) + len(reply.body) + ENTRY_OVERHEAD
