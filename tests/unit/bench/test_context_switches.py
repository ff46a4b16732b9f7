"""The load harness counts the servers' context switches from /proc, every thread."""

from __future__ import annotations

import os
import threading

from jpki_va.bench.loadgen import context_switches


def test_a_thread_that_waits_is_counted_among_its_process_switches() -> None:
    waited, done = threading.Event(), threading.Event()

    def wait_twenty_times_then_stay() -> None:
        pause = threading.Event()
        for _ in range(20):
            pause.wait(0.001)  # each wait gives the CPU up: a voluntary switch
        waited.set()
        done.wait()  # alive while counted: a thread's count goes with it when it ends

    before = context_switches([os.getpid()])
    thread = threading.Thread(target=wait_twenty_times_then_stay)
    thread.start()
    try:
        assert waited.wait(10)
        after = context_switches([os.getpid()])
    finally:
        done.set()
        thread.join()
    assert after[0] - before[0] >= 20
    assert after[1] >= before[1]


def test_a_process_that_is_gone_counts_nothing() -> None:
    assert context_switches([2**22 + 12345]) == (0, 0)
