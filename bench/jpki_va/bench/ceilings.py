"""The store ceiling: raw LMDB gets from Python on the responder's own index.

One process per responder worker, each with its own read-only environment and
one long read transaction, getting the keys of the same serial mix in a loop:
how fast Python can read the index at all. Beside it, the same keys through
`IndexStatusSource.status` (the domain's one-get path, with its decoding), so the
cost of each layer shows.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind, parse_record_key, record_key
from jpki_va.server.responder.status import IndexHolder, IndexStatusSource


def _raw_gets(path: str, keys: Sequence[bytes], seconds: float, out: Any) -> None:
    env = lmdb.open(path, readonly=True, max_dbs=3, lock=True, map_size=1 << 40)
    db = env.open_db(b"status", create=False)
    n = len(keys)
    done = 0
    found = 0
    deadline = time.perf_counter() + seconds
    with env.begin(db=db, buffers=True) as txn:
        get = txn.get
        while time.perf_counter() < deadline:
            for i in range(1000):
                if get(keys[(done + i) % n]) is not None:
                    found += 1
            done += 1000
    elapsed = seconds + (time.perf_counter() - deadline)
    env.close()
    out.put({"gets": done, "found": found, "seconds": elapsed})


def _source_lookups(index_root: str, keys: Sequence[bytes], seconds: float, out: Any) -> None:
    holder = IndexHolder(Path(index_root))
    holder.refresh()
    source = IndexStatusSource(holder)
    clock = SystemClock()
    pairs: list[tuple[CertKind, int]] = [parse_record_key(k) for k in keys]
    n = len(pairs)
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for i in range(200):
            kind, serial = pairs[(done + i) % n]
            source.status(kind, serial, clock.now())
        done += 200
    elapsed = seconds + (time.perf_counter() - deadline)
    holder.close()
    out.put({"gets": done, "found": 0, "seconds": elapsed})


def _parallel(target: Any, args: tuple[Any, ...], processes: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, out)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    parts = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(10)
    rate = sum(p["gets"] / p["seconds"] for p in parts)
    return {
        "processes": processes,
        "per_second": round(rate, 1),
        "per_process_per_second": round(rate / processes, 1),
        "found_share": round(
            sum(p["found"] for p in parts) / max(1, sum(p["gets"] for p in parts)), 3
        ),
    }


def store_ceiling(
    index_path: Path,
    index_root: Path,
    pairs: Sequence[tuple[CertKind, int]],
    processes: int,
    seconds: float,
) -> dict[str, Any]:
    keys = [record_key(kind, serial) for kind, serial in pairs]
    return {
        "raw_lmdb_get": _parallel(_raw_gets, (str(index_path), keys, seconds), processes),
        "status_source": _parallel(_source_lookups, (str(index_root), keys, seconds), processes),
    }
