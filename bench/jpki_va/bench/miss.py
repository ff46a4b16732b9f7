"""CPU per OCSP cache miss, in one process: the figure a change to the miss path moves.

At national scale most OCSP requests miss the worker's cache and are answered from the
replica's pre-produced store. On a loaded 2-core machine a gRPC round's worker CPU per
call scatters by tens of microseconds, more than such a change saves. Here the miss
path runs alone, without a transport: the responder's own objects over the running
replica's index, OCSP key and store (wired by the worker's own `ocsp_responder`, its
metrics included),
the gate with a verifier of the index and a ledger shard of its own, and a cache that
keeps nothing, so every request misses. Each pass asks the peers' requests
(`peers/requests.hex`, distinct certificates) once; the figure is the process CPU
per request, the least of the passes (what the code costs when nothing else runs)
and their median.

`answered` counts how each request was answered (`OcspObserver.ocsp_answered`), so a
figure is known to be the served path's.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from jpki_va.bench.passes import cpu_per_item
from jpki_va.core.clock import SystemClock
from jpki_va.server.access.gate import Caller, Gate
from jpki_va.server.app.config import ResponderConfig
from jpki_va.server.app.responder_app import ocsp_responder
from jpki_va.server.ledger.provisions import open_shard
from jpki_va.server.responder.metrics import WorkerMetrics
from jpki_va.server.responder.ocsp_access import GatedOcsp
from jpki_va.server.responder.ocsp_keys import OcspKeyStore
from jpki_va.server.responder.preproduced import PreproducedStore
from jpki_va.server.responder.status import (
    IndexHolder,
    IndexStatusSource,
    IssuerCompromiseSource,
)

PASSES = 15
REQUESTS = 5_000
WARMUP = 200


class _Counted(WorkerMetrics):
    """The worker's metrics, with how each request was answered counted too."""

    def __init__(self) -> None:
        super().__init__()
        self.served: Counter[str] = Counter()

    def ocsp_answered(
        self, cache: str | None, preproduced: str | None, answers: tuple[tuple[str, str], ...]
    ) -> None:
        super().ocsp_answered(cache, preproduced, answers)
        if preproduced is not None:
            self.served[preproduced] += 1


def miss_figures(
    config: ResponderConfig, requests: list[bytes], verifier: str, passes: int = PASSES
) -> dict[str, Any]:
    """CPU µs per gated OCSP miss over `requests` (DER), as `verifier`, `passes` times:
    in a process of its own, as LMDB opens an environment once per process (the bench's
    own already has the store open) and so that nothing else runs in it."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as process:
        return process.submit(_measure, config, requests, verifier, passes).result()


def _measure(
    config: ResponderConfig, requests: list[bytes], verifier: str, passes: int
) -> dict[str, Any]:
    if not requests:
        raise ValueError("no OCSP requests to ask")
    holder = IndexHolder(config.index_dir)
    holder.refresh()
    store = PreproducedStore(config.state_dir)
    metrics = _Counted()
    clock = SystemClock()
    # As a worker wires it, with a cache that keeps nothing: every request misses.
    responder, _ = ocsp_responder(
        replace(config, ocsp_cache_mb=0),
        IssuerCompromiseSource(IndexStatusSource(holder), holder),
        holder,
        OcspKeyStore(config.ocsp_dir),
        clock,
        metrics,
        store,
    )
    caller = Caller(claimed_id=verifier)
    with tempfile.TemporaryDirectory(prefix="bench-miss-") as scratch:
        ledger = open_shard(Path(scratch), 0)
        try:
            gated = GatedOcsp(responder, Gate(holder.verifiers, ledger, clock))
            for der in requests[:WARMUP]:
                gated.respond(caller, der)
            metrics.served.clear()

            def ask() -> None:
                for der in requests:
                    gated.respond(caller, der)

            least, median = cpu_per_item(ask, len(requests), passes)
        finally:
            ledger.close()
            store.close()
            holder.close()
    return {
        "requests": len(requests),
        "passes": passes,
        "cpu_us_per_miss_min": round(least, 2),
        "cpu_us_per_miss_median": round(median, 2),
        "answered": dict(metrics.served),
    }


def peer_requests(path: Path, limit: int = REQUESTS) -> list[bytes]:
    """The first `limit` requests of a peers' requests file (hex DER, one per line)."""
    with path.open() as lines:
        return [bytes.fromhex(line.strip()) for line, _ in zip(lines, range(limit), strict=False)]
