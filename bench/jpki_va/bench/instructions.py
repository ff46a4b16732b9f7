"""Instructions per served call: the trivial server's worker and the responder's, each
run under valgrind's callgrind while the bench's load runs on it.

The gRPC step's ratios move by ±0.2 between runs on a shared 2-core machine, and the
profile step's samples with them. An instruction count does not: callgrind counts the
instructions a process executes, whatever else the machine is doing, so the same code
under the same load gives about the same count, run after run. It leaves out what is
not an instruction of the process (the kernel's work, waits on memory and locks),
which both servers have in about equal measure: the instruction ratio is below the
CPU ratio. It is the figure to compare two versions of the code by, and to find where
a call's instructions go (by library and function, as the profile step splits CPU).

Each worker runs under valgrind with instrumentation off (`--instr-atstart=no`), so
it starts at a few times its native speed, and on (`callgrind_control -i on`) from
just before the load: only serving is counted. The load has no warm-up window here;
every call it completed is set against every instruction counted until the dump.
LMDB's maps are capped in the worker (`MAP_CAP`): valgrind gives a process 128 GB
of address space at most, and the responder reserves more than that for its maps.

valgrind must be installed (Debian's `valgrind`, which `./tasks bench` installs).
"""

from __future__ import annotations

import multiprocessing
import queue
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from jpki_va.bench import calls, profile

#: The most a worker's LMDB environment maps under valgrind: its ledger, index and
#: pre-produced store together stay well inside valgrind's address space.
MAP_CAP = 8 << 30
#: Functions listed per interface, those whose instructions per call differ most.
TOP = 15
#: Seconds to wait for a worker to start under valgrind (it reads the index's
#: metadata at a few times its native speed).
START_SECONDS = 600.0

# Imported first by the worker (a `sitecustomize` on its path): LMDB's maps capped.
_SITE = f"""import lmdb

_open = lmdb.open


def _capped(path, *args, **kwargs):
    if kwargs.get("map_size", 0) > {MAP_CAP}:
        kwargs["map_size"] = {MAP_CAP}
    return _open(path, *args, **kwargs)


lmdb.open = _capped
"""


class InstructionsError(OSError):
    """valgrind is missing, or a worker could not be counted (an OSError: the bench's
    command line says it in one line)."""


def valgrind_command() -> str:
    """The valgrind executable, or InstructionsError saying how to get one."""
    found = shutil.which("valgrind")
    if found is None or shutil.which("callgrind_control") is None:
        raise InstructionsError("the instructions step needs valgrind (apt install valgrind)")
    return found


_NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


def self_costs(text: str) -> Counter[tuple[str, str]]:
    """Instructions per (object, function) executed in the function itself, from a
    callgrind output file (its format: `ob=`/`fn=` name the current object and
    function, compressed to `(id)` after their first use; a cost line after `calls=`
    is the call's inclusive cost, which is not the caller's own)."""
    names: dict[tuple[str, str], str] = {}
    costs: Counter[tuple[str, str]] = Counter()
    ob = fn = "?"
    after_call = False

    def named(kind: str, value: str) -> str:
        found = _NAMED.fullmatch(value)
        if found is None:
            return value
        key = (kind, found.group(1))
        if found.group(2) is not None:
            names[key] = found.group(2)
        return names.get(key, value)

    for line in text.splitlines():
        if not line:
            continue
        if line[0].isdigit() or line[0] in "+-*":
            fields = line.split()
            if after_call:
                after_call = False
            elif len(fields) >= 2 and fields[1].isdigit():
                costs[ob, fn] += int(fields[1])
            continue
        key, _, value = line.partition("=")
        if key == "ob":
            ob = Path(named("ob", value)).name
        elif key == "fn":
            fn = named("fn", value)
        elif key in ("cob", "cfn", "cfi", "cfl"):
            named({"cob": "ob", "cfn": "fn"}.get(key, "fl"), value)  # a callee's name, learnt
        elif key in ("fl", "fi", "fe"):
            named("fl", value)
        elif key == "calls":
            after_call = True
    return costs


def _dumped(out_dir: Path, pid: int) -> str:
    """The text of the dump `callgrind_control -d` made of process `pid`."""
    parts = sorted(out_dir.glob(f"callgrind-{pid}.out.*"))
    if not parts:
        raise InstructionsError(f"callgrind wrote no dump for worker {pid}")
    return parts[-1].read_text(errors="replace")


def side(instructions: Counter[tuple[str, str]], calls_served: int) -> profile.Side:
    """One server's instructions per call, split by library and by function (the
    profile step's `Side`, in instructions rather than µs)."""
    if calls_served <= 0:
        raise InstructionsError("the load completed no call on the counted worker")
    libraries: Counter[str] = Counter()
    for (dso, _), count in instructions.items():
        libraries[profile.library(dso)] += count
    total = sum(instructions.values())
    figures = {
        "calls": calls_served,
        "instructions_per_call": round(total / calls_served),
        "by_library": {
            name: round(count / calls_served) for name, count in libraries.most_common()
        },
    }
    return figures, {key: count / calls_served for key, count in instructions.items()}


def compare(trivial: profile.Side, jpki: profile.Side, top: int = TOP) -> dict[str, Any]:
    """`profile.compare` of two sides in instructions, with the ratio of the trivial
    server's instructions per call to the responder's."""
    out = profile.compare(trivial, jpki, top)
    theirs = trivial[0]["instructions_per_call"]
    mine = jpki[0]["instructions_per_call"]
    out["ratio_to_trivial"] = round(theirs / mine, 3) if mine else None
    out["over_trivial"] = {name: round(v) for name, v in out["over_trivial"].items()}
    out["functions"] = [[lib, name, round(t), round(j)] for lib, name, t, j in out["functions"]]
    return out


@contextmanager
def _under_valgrind(valgrind: str, scratch: Path) -> Iterator[Path]:
    """Processes spawned meanwhile run under callgrind, instrumentation off until
    asked; yields the directory of their dumps."""
    site = scratch / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE)
    dumps = scratch / "dumps"
    dumps.mkdir(exist_ok=True)
    wrapper = scratch / "python-under-callgrind"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{valgrind}" -q'
        f" --tool=callgrind --instr-atstart=no"
        f' --callgrind-out-file="{dumps}/callgrind-%p.out" "{sys.executable}" "$@"\n'
    )
    wrapper.chmod(0o700)
    ctx = multiprocessing.get_context("spawn")
    ctx.set_executable(str(wrapper))
    try:
        yield dumps
    finally:
        ctx.set_executable(sys.executable)


def _control(*args: str) -> None:
    done = subprocess.run(
        ["callgrind_control", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise InstructionsError(f"callgrind_control {' '.join(args)} failed: {done.stderr[:200]}")


def count_instructions(
    load: Callable[[str], int],
    worker: calls.Worker,
    scratch: Path,
) -> tuple[Counter[tuple[str, str]], int]:
    """(Instructions per (object, function), calls served) of one worker under
    callgrind (`worker(port, ready, stop)` gives its target and args) while
    `load(target)` loads it and returns the calls it completed."""
    valgrind = valgrind_command()
    ctx = multiprocessing.get_context("spawn")
    port = calls.free_port()
    ready, stop = ctx.Queue(), ctx.Event()
    target, args = worker(port, ready, stop)
    with _under_valgrind(valgrind, scratch) as dumps:
        proc = ctx.Process(target=target, args=args, name="bench-instructions")
        proc.start()
    try:
        _await_ready(ready, proc)
        pid = proc.pid
        assert pid is not None  # started above
        _control("-i", "on", str(pid))
        served = load(f"127.0.0.1:{port}")
        _control("-d", str(pid))
        return self_costs(_dumped(dumps, pid)), served
    finally:
        calls.stop_worker(proc, stop, grace=60.0)  # under valgrind it ends slower


def _await_ready(ready: Any, proc: BaseProcess) -> None:
    """Return once the worker says it serves; InstructionsError, in one line, when it
    exits first or does not start in `START_SECONDS`."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            ready.get(timeout=1.0)
            return
        except queue.Empty:
            if not proc.is_alive():
                raise InstructionsError(
                    f"the worker exited under valgrind before serving (exit code {proc.exitcode})"
                ) from None
            if time.monotonic() > deadline:
                raise InstructionsError(
                    f"the worker did not start under valgrind in {START_SECONDS:.0f} s"
                ) from None
