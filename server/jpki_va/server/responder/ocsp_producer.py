"""The producer of pre-produced OCSP responses (responder/preproduced.py): signs ahead.

One per replica, in a low-priority process of its own (app/responder_app.py), within
a bounded share of one CPU: after each batch it sleeps so that its CPU time stays
`share` of the time that passes. It walks every certificate of the index (a pass)
after a full index build and after a delegated-key rotation (full passes: every
entry's status basis compared with the index), and every `sweep` seconds (a sweep:
only what is missing or near its nextUpdate is signed, once the index has re-signed
CRLs with a later one; the rest is not read from the index); after a
delta it first does the certificates the delta's loss events name, so a revocation
is pre-produced at once (until then, and whenever an entry is not right, workers sign
live). A pass keeps what is still right and signs the rest; what it has done goes to
the store with each batch, in the batch's transaction, so a producer killed mid-pass
leaves only whole, checked-when-served entries and the next one starts over.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from jpki_va.core.clock import Clock
from jpki_va.core.domain import micros, parse_record_key, record_key
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
    # A sweep re-signs only what is missing or near its nextUpdate: a full pass (a new
    # index or key) compares every entry's basis with the index as well.
    sweep: bool = False
    after: bytes = b""  # the last record key done
    events: int = 0  # the index's event sequence whose losses are done
    done: bool = False
    finished: float = 0.0
    cpu_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))

    def state(self) -> dict[str, object]:
        out = asdict(self)
        out["after"] = self.after.hex()
        out["seconds"] = round((self.finished or time.time()) - self.started, 3)
        return out

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> Pass | None:
        """The pass a store's state records (None: none, or of another version), so a
        restarted producer resumes it rather than beginning again."""
        names = {f.name for f in fields(cls)}
        if not names <= set(state):
            return None
        values = {name: state[name] for name in names}
        values["after"] = bytes.fromhex(values["after"])
        return cls(**values)


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
        self._pass = Pass.of_state(store.state())

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
        work = self._work(index, signer.hex())
        if work is None:
            return 0.5
        self._produce(index, *work)
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

    def _work(self, index: Index, signer: str) -> tuple[list[bytes], bool] | None:
        """The record keys to do next and whether each is checked in full (not only
        for its nextUpdate), or None when there is nothing to do now."""
        pass_ = self._pass
        name = index.path.name
        if pass_ is None or (pass_.index, pass_.signer) != (name, signer):
            # A new full index or a new key: every response is checked again.
            pass_ = self._pass = Pass(name, signer, time.time(), events=index.event_sequence)
        elif pass_.done and time.time() - pass_.finished >= self._sweep:
            pass_ = self._pass = Pass(name, signer, time.time(), sweep=True, events=pass_.events)
        if index.event_sequence > pass_.events:
            events = list(itertools.islice(index.events_since(pass_.events), self._batch))
            if events:
                pass_.events = max(pass_.events, events[-1].sequence)
                return [record_key(e.kind, e.serial) for e in events], True
            pass_.events = index.event_sequence
        if pass_.done:
            return None
        keys = index.keys_after(pass_.after, self._batch)
        if len(keys) < self._batch:
            pass_.done, pass_.finished = True, time.time()
        if keys:
            pass_.after = keys[-1]
        return keys, not pass_.sweep

    def _produce(self, index: Index, keys: list[bytes], full: bool) -> None:
        assert self._pass is not None
        now = self._clock.now()
        # Only a full pass reads each status: between them, the losses a delta brings
        # come as events (`_work`), and the workers sign whatever else is not right.
        due = None if full else micros(now) + int(self._ahead * 1_000_000)
        issuers = index.issuers
        writes: list[tuple[bytes, bytes]] = []
        tally = dict.fromkeys(RESULTS, 0)
        for key, existing in zip(keys, self._store.get_many(keys), strict=True):
            if due is not None and existing is not None and existing.next_update > due:
                tally["kept"] += 1
                continue
            kind, serial = parse_record_key(key)
            result, entry = self._responder.preproduce(
                kind, serial, issuers, existing, now, self._ahead
            )
            tally[result] += 1
            if entry is not None:
                writes.append((key, entry))
        for result, n in tally.items():
            self._pass.counts[result] += n
            if n:
                self._counted(result, n)
        fault_point("ocsp.produce.signed")
        # The entries and the progress in one transaction: a crash loses neither alone.
        self._store.put_many(writes, self._pass.state())
        fault_point("ocsp.produce.written")
