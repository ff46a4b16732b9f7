"""A stop signal stops a role wherever its main thread was: also while that thread
holds the stop Event's own lock (inside `stop.wait`, around each wait, or inside a
first signal's `stop.set` when a second one comes). Real signals from another process:
the child arms its stop round after round while the test sends SIGTERM after SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

ROUNDS = 2_000
SECONDS = 60.0  # a child still running then is hung: no round takes near that long

SCRIPT = textwrap.dedent(
    f"""
    import signal, threading

    from jpki_va.server.app.signals import stop_on_signals

    for round_ in range({ROUNDS}):
        stop = threading.Event()
        stop_on_signals(stop, (signal.SIGTERM,))
        if round_ == 0:
            print("ready", flush=True)
        while not stop.wait(0.0001):
            pass
    # Ignored from here: the interpreter's exit puts the default action back.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("done", flush=True)
    """
)


def test_a_storm_of_signals_stops_every_round_without_a_hang() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + SECONDS
        sent = 0
        try:
            while child.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):  # it just ended
                    os.kill(child.pid, signal.SIGTERM)
                    sent += 1
            assert child.poll() is not None, f"hung after {sent} signals"
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == 0
        assert child.stdout.read().strip() == "done"
