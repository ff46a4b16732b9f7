"""A spawned process tied to its parent stops when the parent dies, by both ties (the
parent-death signal and the liveness pipe), and refuses to run when the parent died
before it could tie itself. Real processes: a parent script that spawns a child."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import wait_for

# The child reports through files in the directory given: what happened, in order.
SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys, threading, time
    from pathlib import Path

    from jpki_va.server.app.lifeline import ParentGone, tie_to_parent

    def note(out, what):
        with open(out / "events", "a") as f:
            f.write(what + "\\n")

    def child(out, late):
        parent = multiprocessing.parent_process().pid
        if late:  # let the parent die first: the race the pid check closes
            deadline = time.monotonic() + 30
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.01)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: (note(out, "signal"), stopped.set()))
        try:
            tie_to_parent(lambda: (note(out, "pipe"), stopped.set()), deadline=2.0)
        except ParentGone as exc:
            note(out, f"refused: {exc}")
            return
        note(out, "tied")
        stopped.wait(30)
        time.sleep(5)  # a stop that hangs: the deadline ends the process

    if __name__ == "__main__":
        out, late = Path(sys.argv[1]), sys.argv[2] == "late"
        proc = multiprocessing.get_context("spawn").Process(target=child, args=(out, late))
        proc.start()
        (out / "child").write_text(str(proc.pid))
        events, deadline = out / "events", time.monotonic() + 60
        while not late and time.monotonic() < deadline:
            if events.exists() and "tied" in events.read_text():
                break
            time.sleep(0.01)
        os._exit(0)  # no clean-up: as if killed
    """
)


def _run(tmp_path: Path, mode: str) -> tuple[int, Path]:
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT)
    subprocess.run([sys.executable, str(script), str(tmp_path), mode], check=True, timeout=90)
    return int((tmp_path / "child").read_text()), tmp_path / "events"


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_tied_child_stops_by_both_ties_and_ends_after_the_deadline(tmp_path: Path) -> None:
    pid, events = _run(tmp_path, "tied")
    wait_for(lambda: _gone(pid), "the orphaned child to end", timeout=30)
    seen = events.read_text().splitlines()
    assert seen[0] == "tied"
    assert {"signal", "pipe"} <= set(seen[1:]), seen


def test_a_child_whose_parent_died_before_the_tie_does_not_run(tmp_path: Path) -> None:
    pid, events = _run(tmp_path, "late")
    wait_for(lambda: _gone(pid), "the late child to end", timeout=30)
    seen = events.read_text().splitlines()
    assert len(seen) == 1 and seen[0].startswith("refused: supervisor"), seen
