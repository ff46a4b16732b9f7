"""The producer of pre-produced OCSP responses (responder/preproduced.py): signs ahead.

One per replica, in a low-priority process of its own (app/responder_app.py), within
a bounded share of one CPU: after each batch it sleeps so that its CPU time stays
`share` of the time that passes. It walks every certificate of the index (a pass)
after a full index build, after a delegated-key rotation, and every `sweep` seconds
(to renew responses near their nextUpdate once the index has re-signed CRLs); after a
delta it first does the certificates the delta's loss events name, so a revocation
is pre-produced at once (until then, and whenever an entry is not right, workers sign
live). A pass keeps what is still right and signs the rest; what it has done goes to
the store with each batch, in the batch's transaction, so a producer killed mid-pass
leaves only whole, checked-when-served entries and the next one starts over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from jpki_va.core.clock import Clock
from jpki_va.core.domain import parse_record_key, record_key
from jpki_va.server.base.faults import fault_point
from jpki_va.server.responder.index_reader import Index
from jpki_va.server.responder.ocsp import OcspResponder
from jpki_va.server.responder.preproduced import PreproducedStore
from jpki_va.server.responder.status import IndexHolder, NotReady

RESULTS = ("produced", "stale", "kept", "skipped")


@dataclass
class Pass:
    """One walk over the index for one (index, full snapshot, signer)."""

    index: str  # the index directory's name
    signer: str  # the responder ID (hex) the pass signs with
    started: float  # epoch seconds
    after: bytes = b""  # the last record key done
    done: bool = False
    finished: float = 0.0
    cpu_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))

    def state(self) -> dict[str, object]:
        out = asdict(self)
        out["after"] = self.after.hex()
        out["seconds"] = round((self.finished or time.time()) - self.started, 3)
        return out


class Producer:
    def __init__(
        self,
        holder: IndexHolder,
        responder: OcspResponder,
        store: PreproducedStore,
        clock: Clock,
        *,
        share: float = 0.25,
        batch: int = 256,
        sweep: float = 900.0,
        ahead: float = 3600.0,
        counted: Callable[[str, int], None] | None = None,
    ) -> None:
        if not 0 < share <= 1 or batch < 1 or sweep <= 0 or ahead < 0:
            raise ValueError("producer: share in (0, 1], batch >= 1, sweep > 0, ahead >= 0")
        self._holder = holder
        self._responder = responder
        self._store = store
        self._clock = clock
        self._share = share
        self._batch = batch
        self._sweep = sweep
        self._ahead = ahead
        self._counted = counted or (lambda result, n: None)
        self._pass: Pass | None = None
        self._events = 0  # the index's event sequence whose losses are done

    @property
    def current(self) -> Pass | None:
        return self._pass

    def step(self) -> float:
        """Do one batch of work if there is any; the seconds to rest before the next
        (the bounded share: CPU used * (1 - share) / share), or 0.5 when idle."""
        try:
            index = self._holder.get()
        except NotReady:
            return 0.5
        signer = self._responder.signer_id()
        if signer is None:
            self._without_key(index)
            return 0.5
        index.refresh()
        started = time.thread_time()
        keys = self._work(index, signer.hex())
        if keys is None:
            return 0.5
        self._produce(index, keys)
        used = time.thread_time() - started
        assert self._pass is not None
        self._pass.cpu_seconds += used
        return used * (1 - self._share) / self._share

    def _without_key(self, index: Index) -> None:
        """No delegated key yet (an index without issuers, a responder not certified):
        nothing can be signed, so the pass over this index is over, and says so."""
        if self._pass is None or (self._pass.index, self._pass.signer) != (index.path.name, ""):
            now = time.time()
            self._pass = Pass(index.path.name, "", now, done=True, finished=now)
            self._store.put_many([], self._pass.state())

    def _work(self, index: Index, signer: str) -> list[bytes] | None:
        """The record keys to do next, or None when there is nothing to do now."""
        pass_ = self._pass
        name = index.path.name
        if pass_ is None or (pass_.index, pass_.signer) != (name, signer):
            # A new full index or a new key: every response is checked again.
            pass_ = self._pass = Pass(name, signer, time.time())
            self._events = index.event_sequence
        elif pass_.done and time.time() - pass_.finished >= self._sweep:
            pass_ = self._pass = Pass(name, signer, time.time())
        if index.event_sequence > self._events:
            events = list(index.events_since(self._events))
            if events:
                self._events = max(self._events, events[-1].sequence)
                return [record_key(e.kind, e.serial) for e in events[: self._batch * 4]]
            self._events = index.event_sequence
        if pass_.done:
            return None
        keys = index.keys_after(pass_.after, self._batch)
        if len(keys) < self._batch:
            pass_.done, pass_.finished = True, time.time()
        if keys:
            pass_.after = keys[-1]
        return keys

    def _produce(self, index: Index, keys: list[bytes]) -> None:
        assert self._pass is not None
        now = self._clock.now()
        issuers = index.issuers
        writes: list[tuple[bytes, bytes]] = []
        counts = self._pass.counts
        for key, existing in zip(keys, self._store.get_many(keys), strict=True):
            kind, serial = parse_record_key(key)
            result, entry = self._responder.preproduce(
                kind, serial, issuers, existing, now, self._ahead
            )
            counts[result] += 1
            self._counted(result, 1)
            if entry is not None:
                writes.append((key, entry))
        fault_point("ocsp.produce.signed")
        # The entries and the progress in one transaction: a crash loses neither alone.
        self._store.put_many(writes, self._pass.state())
        fault_point("ocsp.produce.written")
