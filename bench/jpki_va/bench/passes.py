"""CPU per item of one piece of work run several times over in this process: the
least pass (what the code costs when nothing else runs) and the median pass. The
in-process steps (miss, lookup) report both."""

from __future__ import annotations

import time
from collections.abc import Callable


def cpu_per_item(work: Callable[[], object], items: int, passes: int) -> tuple[float, float]:
    """(least, median) process CPU µs per item of `work()`, which handles `items`
    items, over `passes` passes (the upper median of an even count)."""
    per_item = []
    for _ in range(passes):
        started = time.process_time()
        work()
        per_item.append((time.process_time() - started) / items * 1e6)
    per_item.sort()
    return per_item[0], per_item[len(per_item) // 2]
