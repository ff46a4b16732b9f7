"""Where a served call's worker CPU goes, by library: the trivial server's workers and
the responder's sampled by `perf` under the same load.

The gRPC step's ratios move by ±0.2 between runs, and the calls step counts Python
calls, not what they cost. This step samples the worker processes' CPU (perf's
`cpu-clock` event, which a VM without hardware counters offers too) while the
bench's load runs on each server in turn, and splits each server's measured worker
CPU per call by the shared object the samples fell in: the interpreter, grpc's
core, the kernel, LMDB, libc, protobuf, jpki-va's compiled modules. Side by side,
what the responder spends over the trivial server is found in the library that
spends it, with the functions whose cost differs most.

perf must be installed (Debian's `linux-perf`, which `./tasks bench` installs) and
allowed to sample the workers (root, or `kernel.perf_event_paranoid` <= 1).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Samples a second per sampled process: enough for ~10^4 samples a 5 s window.
FREQUENCY = 2000
#: Functions listed per interface, those whose cost per call differs most.
TOP = 15
#: Shared-object name prefixes and the library each is reported as; the rest "other".
LIBRARIES: tuple[tuple[str, str], ...] = (
    ("libpython", "python"),
    ("python3", "python"),
    ("cygrpc.", "grpc"),
    ("[kernel", "kernel"),
    ("cpython.cpython-", "lmdb"),  # py-lmdb's extension, LMDB compiled in
    ("libc.", "libc"),
    ("libc-", "libc"),
    ("_message.", "protobuf"),
    ("_batch_wire.", "jpki-va compiled"),
    ("_lmdb_pages.", "jpki-va compiled"),
    ("_ocsp_miss.", "jpki-va compiled"),
    ("_counter_cells.", "jpki-va compiled"),
)

_RECORD = ("record", "-q", "-e", "cpu-clock", "-F", str(FREQUENCY))
# One line a (shared object, function): its samples, the object, the function.
_REPORT = [
    "--no-children",
    "--sort",
    "dso,sym",
    "--stdio",
    "-g",
    "none",
    "-F",
    "sample,dso,sym",
    "-t",
    "|",
]

#: One server's figures and its µs per call by (shared object, function).
Side = tuple[dict[str, Any], dict[tuple[str, str], float]]


class ProfileError(OSError):
    """perf is missing, or may not sample the workers (an OSError: the bench's command
    line says it in one line, as it says a missing file)."""


def perf_command() -> str:
    """The perf executable, or ProfileError saying how to get one."""
    found = shutil.which("perf")
    if found is None:
        raise ProfileError("the profile step needs perf (apt install linux-perf)")
    return found


def library(dso: str) -> str:
    """The library a shared object is reported as (`LIBRARIES`)."""
    for prefix, name in LIBRARIES:
        if dso.startswith(prefix):
            return name
    return "other"


def parse_report(text: str) -> Counter[tuple[str, str]]:
    """Samples per (shared object, function) from `perf report -F sample,dso,sym -t '|'`."""
    samples: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        if line.startswith("#") or line.count("|") != 2:
            continue
        count, dso, sym = (field.strip() for field in line.split("|"))
        if not count.isdigit():
            continue
        # "[.] name" (user space) or "[k] name" (kernel): the marker is not the name.
        name = sym[4:] if sym[:1] == "[" and sym[2:4] == "] " else sym
        samples[dso, name] += int(count)
    return samples


def sampled(
    perf: str, pids: Sequence[int], out: Path, load: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], Counter[tuple[str, str]]]:
    """(`load()`'s result, samples per (shared object, function) of `pids` meanwhile)."""
    record = subprocess.Popen(
        [perf, *_RECORD, "-o", str(out), "-p", ",".join(map(str, pids))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        result = load()
    finally:
        record.send_signal(signal.SIGINT)  # perf writes its file and stops
        _, err = record.communicate(timeout=120)
    # perf ends by raising the signal it was stopped with: -SIGINT is a clean stop.
    if record.returncode not in (0, -signal.SIGINT) or not out.is_file():
        detail = (err or "").strip().splitlines()
        raise ProfileError(
            f"perf record failed ({detail[-1] if detail else record.returncode}): "
            "run as root or lower kernel.perf_event_paranoid"
        )
    report = subprocess.run(
        [perf, "report", "-i", str(out), *_REPORT],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if report.returncode != 0:
        raise ProfileError(f"perf report failed: {report.stderr.strip()[:200]}")
    return result, parse_report(report.stdout)


def side(result: dict[str, Any], samples: Counter[tuple[str, str]]) -> Side:
    """One server's worker CPU per call (as the load measured it), split by library and
    by function in proportion to the samples."""
    per_item = result.get("server_cpu_us_per_item") or 0.0
    total = sum(samples.values())
    scale = per_item / total if total else 0.0
    libraries: Counter[str] = Counter()
    for (dso, _), count in samples.items():
        libraries[library(dso)] += count
    figures = {
        "rate": result["rate"],
        "cpu_us_per_item": per_item,
        "samples": total,
        "by_library": {name: round(count * scale, 2) for name, count in libraries.most_common()},
    }
    return figures, {key: count * scale for key, count in samples.items()}


def compare(trivial: Side, jpki: Side, top: int = TOP) -> dict[str, Any]:
    """Both servers' figures, what the responder spends over the trivial server per
    library, and the `top` functions whose cost per call differs most, as
    [library, function, trivial µs, jpki-va µs]."""
    (theirs, their_functions), (mine, my_functions) = trivial, jpki
    names = set(theirs["by_library"]) | set(mine["by_library"])
    over = {
        name: round(mine["by_library"].get(name, 0.0) - theirs["by_library"].get(name, 0.0), 2)
        for name in names
    }

    def gap(key: tuple[str, str]) -> float:
        return abs(my_functions.get(key, 0.0) - their_functions.get(key, 0.0))

    # Ties in name order: the same samples give the same report.
    differs = sorted(sorted(set(my_functions) | set(their_functions)), key=gap, reverse=True)[:top]
    return {
        "trivial": theirs,
        "jpki-va": mine,
        "over_trivial": dict(sorted(over.items(), key=lambda item: (-item[1], item[0]))),
        "functions": [
            [
                library(dso),
                name,
                round(their_functions.get((dso, name), 0.0), 2),
                round(my_functions.get((dso, name), 0.0), 2),
            ]
            for dso, name in differs
        ],
    }
