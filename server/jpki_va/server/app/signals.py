"""SIGTERM and SIGINT stop a role in order: health NOT_SERVING, drain, close, exit 0.

Set explicitly for both, whatever the process inherited: a shell starts background
jobs with SIGINT ignored, and Python's default SIGINT (KeyboardInterrupt) would unwind
a role from wherever it happens to be instead of through its stop.

The handler takes no lock. Python runs a handler in the main thread between two of its
bytecodes, and that thread may be holding the stop Event's own lock: inside
`stop.wait` (which holds it around each wait) or inside a first handler's `stop.set`
when a second signal comes. A handler calling `stop.set` then waits for a lock its own
thread holds, forever: a worker sent SIGTERM twice hung until it was killed. So the
handler writes a byte to a pipe, and a thread of its own sets the Event.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Iterable
from typing import Protocol


class Settable(Protocol):
    """A stop flag: a threading or multiprocessing Event."""

    def set(self) -> None: ...


class _Relay:
    """One pipe and one thread per process: the byte a handler writes sets the Event
    the last `stop_on_signals` named (as a new handler replaces the last one)."""

    def __init__(self) -> None:
        self.target: Settable | None = None
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)  # a storm of signals never blocks
        threading.Thread(target=self._run, name="stop-on-signal", daemon=True).start()

    def _run(self) -> None:
        while os.read(self._read_end, 64):
            target = self.target
            if target is not None:
                target.set()

    def handler(self, signum: int, frame: object) -> None:
        # No Python call in here: each is a point where the next signal's handler may
        # start inside this one, and a storm of signals would nest them without end.
        try:  # noqa: SIM105 (contextlib.suppress is two Python calls)
            os.write(self._write_end, b"\0")
        except BlockingIOError:
            pass  # full: the thread has bytes to read yet


@functools.cache  # one per process: spawned processes start without one
def _relay() -> _Relay:
    return _Relay()


def stop_on_signals(
    stop: Settable, signums: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """`signums` (SIGTERM and SIGINT unless told) set ``stop``, through the relay's
    thread: the handler only writes to a pipe. Only the main thread may install
    handlers."""
    if threading.current_thread() is not threading.main_thread():
        return
    relay = _relay()
    relay.target = stop
    for signum in signums:
        signal.signal(signum, relay.handler)


def wait_for_stop(stop: threading.Event) -> None:
    """Block until ``stop`` is set; the timeout lets signal handlers run promptly."""
    while not stop.wait(1.0):
        pass
