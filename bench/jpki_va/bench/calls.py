"""Python calls per served call: the exact figure beside the noisy ratios.

One 10 s run of the gRPC step moves a unary ratio by ±0.2 on a shared 2-core machine,
while what a unary call costs a worker follows the Python it runs: about a
microsecond of CPU per Python function call once served (grpc's own ~126 calls per
call are most of the trivial server's ~165 µs). So this step serves one worker of the
trivial server and one of the responder, each under a profile hook that counts every
Python function call (and C function call) its threads make while the bench's load
runs, and reports them per call, with the functions whose counts differ most.

A unary Check's counts do not move between runs with the code. An Ocsp's move with
the share of its requests the worker's cache did not hold (the mix repeats a hot set):
that share is counted too (`misses`), and a figure is compared only with one of about
the same share. The hook slows the worker several times over, so its rate here means
nothing and is not reported.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from types import FrameType
from typing import Any

from jpki_va.bench.loadgen import Interface
from jpki_va.bench.trivial import _worker
from jpki_va.server.app.config import ResponderConfig, TlsFiles
from jpki_va.server.app.responder_app import worker_main

#: Each interface's handler on each server: its count is the number of calls served.
HANDLERS: dict[Interface, tuple[str, str]] = {
    "check": ("TrivialServicer.Check", "StatusServicer.Check"),
    "ocsp": ("TrivialServicer.Ocsp", "StatusServicer.Ocsp"),
}
#: A function the responder runs once per request of a kind, per interface: a request
#: that the per-worker OCSP cache did not answer is answered by `OcspResponder.answer`.
SHARES: dict[Interface, dict[str, str]] = {"ocsp": {"misses": "ocsp.py:OcspResponder.answer"}}
#: Functions listed per interface, those whose count per call differs most.
TOP = 25
#: A worker to count: (port, ready queue, stop event) -> its process target and args.
Worker = Callable[[int, Any, ProcessEvent], tuple[Callable[..., None], tuple[Any, ...]]]


def _counting(
    target: Callable[..., None],
    args: tuple[Any, ...],
    out: str,
    start: ProcessEvent,
    seconds: float,
) -> None:
    """Run `target(*args)` with every thread's calls counted for `seconds` after `start`;
    the counts go to the JSON file `out` (function -> calls)."""
    counts: Counter[str] = Counter()
    on = False

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if not on:
            return
        if event == "call":
            code = frame.f_code
            counts[f"{Path(code.co_filename).name}:{code.co_qualname}"] += 1
        elif event == "c_call":
            counts[f"C:{getattr(arg, '__qualname__', type(arg).__name__)}"] += 1

    def window() -> None:
        nonlocal on
        start.wait()
        on = True
        threading.Event().wait(seconds)
        on = False
        Path(out).write_text(json.dumps(dict(counts)))

    threading.setprofile(hook)  # threads started from here on: grpc's pool among them
    sys.setprofile(hook)
    threading.Thread(target=window, daemon=True).start()
    target(*args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _per_call(counts: dict[str, int], handler: str) -> dict[str, float]:
    served = next((n for name, n in counts.items() if name.endswith(":" + handler)), 0)
    if not served:
        raise RuntimeError(f"no call reached {handler} while counting")
    return {name: n / served for name, n in counts.items()}


def compare(trivial: dict[str, int], jpki: dict[str, int], interface: Interface) -> dict[str, Any]:
    """Per call: Python and C calls on each server, and the functions that differ most."""
    names = HANDLERS[interface]
    t, j = _per_call(trivial, names[0]), _per_call(jpki, names[1])

    def total(per: dict[str, float], c: bool) -> float:
        return round(sum(v for k, v in per.items() if k.startswith("C:") == c), 1)

    diff = {k: j.get(k, 0.0) - t.get(k, 0.0) for k in set(t) | set(j)}
    top = sorted(diff.items(), key=lambda item: -abs(item[1]))[:TOP]
    shares = {
        share: round(j.get(name, 0.0), 3) for share, name in SHARES.get(interface, {}).items()
    }
    return {
        "trivial": {"python_calls": total(t, False), "c_calls": total(t, True)},
        "jpki-va": {"python_calls": total(j, False), "c_calls": total(j, True), **shares},
        "extra_python_calls": round(total(j, False) - total(t, False), 1),
        "differences": [[name, round(d, 2)] for name, d in top],
    }


def count_calls(
    run: Callable[[str, Interface], None],
    worker: Worker,
    interface: Interface,
    seconds: float,
    scratch: Path,
    name: str,
) -> dict[str, int]:
    """Counts of one worker (`worker(port, ready, stop)` gives its target and args)
    while `run(target, interface)` loads it; `seconds` counted, from a second in."""
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    ready, start, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    target, args = worker(port, ready, stop)
    out = scratch / f"{name}-{interface}.json"
    proc = ctx.Process(
        target=_counting, args=(target, args, str(out), start, seconds), name=f"bench-calls-{name}"
    )
    proc.start()
    try:
        ready.get(timeout=120)
        timer = threading.Timer(1.0, start.set)
        timer.start()
        run(f"127.0.0.1:{port}", interface)
        timer.join()
        if not out.exists():
            raise RuntimeError(f"the {name} worker counted nothing: the load ended first")
        counts: dict[str, int] = json.loads(out.read_text())
        return counts
    finally:
        stop_worker(proc, stop)


def stop_worker(proc: BaseProcess, stop: ProcessEvent, grace: float = 10.0) -> None:
    """Stop a counted worker: `stop` is the trivial worker's way, SIGTERM the
    responder's; killed when it has not ended in `grace` seconds."""
    stop.set()
    proc.terminate()
    proc.join(grace)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def trivial_worker(
    threads: int, check: bytes, ocsp_der: bytes, tls: TlsFiles | None = None
) -> Worker:
    return lambda port, ready, stop: (_worker, (port, threads, check, ocsp_der, tls, ready, stop))


def responder_worker(config: ResponderConfig, slot: int) -> Worker:
    """The responder's own worker (app/responder_app.worker_main) on `config`'s state,
    gRPC only, with a ledger shard `slot` no running worker holds."""
    ctx = multiprocessing.get_context("spawn")
    grpc_only = replace(config, http_listen=None)

    def make(
        port: int, ready: Any, stop: ProcessEvent
    ) -> tuple[Callable[..., None], tuple[Any, ...]]:
        # The supervisor's flags: ingest fine, in rotation.
        flags = (ctx.RawValue("b", 0), ctx.RawValue("b", 1))
        return worker_main, (grpc_only, slot, port, None, ready, *flags)

    return make
