"""The load harness counts the servers' context switches from /proc, every thread."""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.synchronize import Event

from jpki_va.bench.loadgen import context_switches


def _waiter(ready: Event, go: Event, waited: Event, done: Event) -> None:
    """A process whose only other thread, once `go` is set, waits twenty times."""

    def wait_twenty_times_then_stay() -> None:
        pause = threading.Event()
        for _ in range(20):
            pause.wait(0.001)  # each wait gives the CPU up: a voluntary switch
        waited.set()
        done.wait()  # alive while counted: a thread's count goes with it when it ends

    ready.set()  # started: from here its main thread only waits for `go`
    go.wait(30)
    thread = threading.Thread(target=wait_twenty_times_then_stay)
    thread.start()
    thread.join()


def test_a_thread_that_waits_is_counted_among_its_process_switches() -> None:
    # In a process of its own: in the test's process another thread (of an earlier
    # test, or of a pytest worker) may end inside the window and take its count along.
    ctx = multiprocessing.get_context("spawn")
    ready, go, waited, done = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
    child = ctx.Process(target=_waiter, args=(ready, go, waited, done))
    child.start()
    try:
        assert child.pid is not None and ready.wait(30)
        before = context_switches([child.pid])
        go.set()
        assert waited.wait(30)
        after = context_switches([child.pid])
    finally:
        done.set()
        child.join(30)
    assert after[0] - before[0] >= 20
    assert after[1] >= before[1]


def test_a_process_that_is_gone_counts_nothing() -> None:
    assert context_switches([2**22 + 12345]) == (0, 0)
