"""The in-process steps' pass timing (bench/passes.py): every pass runs the work, and
the figures are per item, least first."""

from __future__ import annotations

import time

from jpki_va.bench.passes import cpu_per_item


def test_each_pass_runs_the_work_and_the_least_and_median_are_per_item() -> None:
    burns = [0.004, 0.002, 0.006]  # CPU seconds each pass burns at least

    def work() -> None:
        until = time.process_time() + burns[len(ran)]
        ran.append(None)
        while time.process_time() < until:
            pass

    ran: list[None] = []
    least, median = cpu_per_item(work, items=4, passes=3)
    assert len(ran) == 3
    # Per item: at least a quarter of what each pass burned; the median pass burned 4 ms.
    assert 500 <= least <= median
    assert median >= 1000
