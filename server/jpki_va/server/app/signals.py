"""SIGTERM and SIGINT stop a role in order: health NOT_SERVING, drain, close, exit 0.

Set explicitly for both, whatever the process inherited: a shell starts background
jobs with SIGINT ignored, and Python's default SIGINT (KeyboardInterrupt) would unwind
a role from wherever it happens to be instead of through its stop.
"""

from __future__ import annotations

import signal
import threading


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (only the main thread may install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def wait_for_stop(stop: threading.Event) -> None:
    """Block until ``stop`` is set; the timeout lets signal handlers run promptly."""
    while not stop.wait(1.0):
        pass
