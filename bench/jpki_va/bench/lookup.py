"""CPU per status read, in one process: what a CheckStream status costs the responder
beyond the transport, part by part, on the replica's own index.

A served stream status costs what the trivial stream's does plus the responder's
own work: reading the request's keys from its bytes, one index read per key, and
encoding each answer. Here each part runs alone, without a transport, on keys drawn
at random from the whole status table, read in batches as a stream's are; and the
same 100 keys read again and again, whose pages and cache lines then stay in the
CPU's caches: the difference between the two reads is waiting for memory. The same
random batches are then read by LMDB's own `get`, one key after another in one read
transaction a batch: the reference that answers wherever the responder's page walk
(responder/lmdb_pages.py) declines, and the path without the compiled walk. Each
figure is the process CPU per key or status, the least of the passes (what the code
costs when nothing else runs) and their median.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import lmdb

from jpki_va.bench.passes import cpu_per_item
from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import micros
from jpki_va.protos import va_pb2
from jpki_va.server.responder.index_reader import Index
from jpki_va.server.responder.status import IndexHolder, PackedBatch
from jpki_va.server.rpc.batch_wire import COMPILED, batch_request, packed_response

PASSES = 5
KEYS = 50_000
BATCH = 100  # the gRPC step's stream batch
_CHUNK = 100_000  # record keys walked at a time


def lookup_figures(index_root: Path, keys: int = KEYS, passes: int = PASSES) -> dict[str, Any]:
    """CPU µs per status of each part, over about `keys` record keys of the index under
    `index_root`, `passes` times: in a process of its own, as LMDB opens an environment
    once per process (the bench's own may have this index open)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as process:
        return process.submit(_measure, index_root, keys, passes).result()


def sample_keys(index: Index, wanted: int, seed: int = 1) -> tuple[list[bytes], int]:
    """(`wanted` record keys drawn at random from the whole status table, in random
    order; the table's size): one walk, a uniform sample kept as it goes."""
    rng = random.Random(seed)
    kept: list[bytes] = []
    seen = 0
    after = b""
    while chunk := index.keys_after(after, _CHUNK):
        for key in chunk:
            if seen < wanted:
                kept.append(key)
            else:
                slot = rng.randrange(seen + 1)
                if slot < wanted:
                    kept[slot] = key
            seen += 1
        after = chunk[-1]
    rng.shuffle(kept)
    return kept, seen


def _request_bytes(keys: list[bytes]) -> bytes:
    """A CheckBatchRequest of plain items naming `keys`, as a verifier's client writes it."""
    requests = [
        va_pb2.CheckRequest(
            cert=va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(kind=key[0], serial=key[1:].lstrip(b"\0"))  # type: ignore[arg-type]
            )
        )
        for key in keys
    ]
    return va_pb2.CheckBatchRequest(requests=requests).SerializeToString()


def _measure(index_root: Path, wanted: int, passes: int) -> dict[str, Any]:
    holder = IndexHolder(index_root)
    holder.refresh()
    try:
        index = holder.get()
        path = index.path
        walked = index.pages_walked
        keys, records = sample_keys(index, wanted)
        if not keys:
            raise ValueError("the index holds no certificate to read")
        size = min(BATCH, len(keys))  # a small index: one batch of all it holds
        batches = [keys[at : at + size] for at in range(0, len(keys) - size + 1, size)]
        statuses = len(batches) * size
        hot = [batches[0]] * len(batches)
        now = micros(SystemClock().now())

        def read(which: list[list[bytes]]) -> Callable[[], object]:
            return lambda: [index.get_values(batch) for batch in which]

        for batch in batches:  # every page in the page cache before any pass
            index.get_values(batch)
        random_read = cpu_per_item(read(batches), statuses, passes)
        hot_read = cpu_per_item(read(hot), statuses, passes)
        packed = []
        for batch in batches:
            values, ids, sequence, _ = index.get_values(batch)
            packed.append(PackedBatch(batch, values, ids, sequence, now, False))
        encode = cpu_per_item(lambda: [packed_response(None, p) for p in packed], statuses, passes)
        raws = [_request_bytes(batch) for batch in batches]
        request = cpu_per_item(lambda: [batch_request(raw) for raw in raws], statuses, passes)
    finally:
        holder.close()
    # After the index is closed: LMDB opens an environment once per process.
    by_get = _lmdb_get(path, batches, statuses, passes)
    return {
        "keys": statuses,
        "records": records,
        "batch": size,
        "passes": passes,
        # Without the compiled module the encoding is the pure-Python reference and the
        # request is parsed by protobuf: the figures say what this install runs.
        "compiled": COMPILED,
        # Whether the random and hot reads were the page walk, not LMDB's get.
        "walked": walked,
        **_least_and_median("cpu_us_per_key_random", random_read),
        **_least_and_median("cpu_us_per_key_hot", hot_read),
        **_least_and_median("cpu_us_per_key_lmdb_get", by_get),
        **_least_and_median("cpu_us_per_status_encode", encode),
        **_least_and_median("cpu_us_per_request_read", request),
    }


def _lmdb_get(
    path: Path, batches: list[list[bytes]], statuses: int, passes: int
) -> tuple[float, float]:
    """CPU per key of the random batches read by LMDB's `get`, one key after another."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=1)
    try:
        status = env.open_db(b"status", create=False)

        def read() -> None:
            for batch in batches:
                with env.begin(db=status) as txn:
                    list(map(txn.get, batch))

        read()  # every page in the page cache before any pass
        return cpu_per_item(read, statuses, passes)
    finally:
        env.close()


def _least_and_median(name: str, figures: tuple[float, float]) -> dict[str, float]:
    return {name: round(figures[0], 3), f"{name}_median": round(figures[1], 3)}
