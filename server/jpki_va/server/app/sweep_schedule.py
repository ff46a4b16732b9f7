"""At every 00:00 Japan time: the 第31条第2号 sweep, then the purge past retention.

Move-out deadlines fall at 00:00 JST (law/resident_change.py), and the loss is dated
when the sweep records it, so the sweep runs then, whether or not the signer
publishes on a timer (`--delta-interval 0` publishes only on request). The thread
looks at the signer's clock every `check` seconds rather than sleeping until
midnight, so a clock that is stepped (NTP, or a test's clock) is followed within one
check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from jpki_va.core.clock import Clock
from jpki_va.server.law.resident_change import next_sweep

log = logging.getLogger(__name__)


class SweepSchedule:
    """Runs `sweep` once each time the clock has passed a 00:00 JST since the last run."""

    def __init__(self, sweep: Callable[[], object], clock: Clock, check: float) -> None:
        if check <= 0:
            raise ValueError("the sweep's check interval must be > 0")
        self._sweep = sweep
        self._clock = clock
        self._check = check
        self._due: datetime = next_sweep(clock.now())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="move-out-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._check):
            now = self._clock.now()
            if now < self._due:
                continue
            try:
                self._sweep()
            except Exception as exc:  # the registry is busy or failing: try at the next check
                log.warning("move-out sweep failed, retrying: %s", exc)
                continue
            self._due = next_sweep(now)
