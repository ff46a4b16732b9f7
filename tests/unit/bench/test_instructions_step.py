"""The instructions step (bench/instructions.py): a callgrind dump read into each
function's own instructions, both servers compared per call, the report's lines; and
callgrind itself counting a real Python process."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from jpki_va.bench import instructions, profile
from jpki_va.bench.report import instructions_lines

needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None, reason="valgrind is not installed (./tasks test installs it)"
)


@needs_valgrind
def test_a_real_dump_is_read_as_each_functions_own_instructions(tmp_path: Path) -> None:
    """Every instruction of a real callgrind run is some function's own, once: the
    functions' self costs add up to the dump's total, so no call's inclusive cost is
    counted again for its caller. The interpreter's loop is named with its object."""
    out = tmp_path / "callgrind.out"
    subprocess.run(
        [
            "valgrind",
            "-q",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-c",
            "def f(n):\n    return sum(i * i for i in range(n))\nf(20000)",
        ],
        check=True,
        timeout=300,
    )
    text = out.read_text()
    totals = re.search(r"^(?:totals|summary): (\d+)", text, re.MULTILINE)
    assert totals is not None
    costs = instructions.self_costs(text)
    assert sum(costs.values()) == int(totals.group(1))
    interpreter = [(dso, fn) for dso, fn in costs if fn.startswith("_PyEval_EvalFrameDefault")]
    assert interpreter and all(profile.library(dso) == "python" for dso, _ in interpreter)


def test_a_synthetic_dump_compresses_names_and_skips_inclusive_costs() -> None:
    """Names given once as `(id) name` are known by their id after; the cost line after
    `calls=` belongs to the callee, not to the caller."""
    text = "\n".join(
        [
            "events: Ir",
            "ob=(1) /usr/lib/libpython3.11.so.1.0",
            "fl=(1) ceval.c",
            "fn=(1) _PyEval_EvalFrameDefault",
            "10 100",
            "+1 50",
            "cob=(2) /usr/lib/x86_64-linux-gnu/libc.so.6",
            "cfi=(2) malloc.c",
            "cfn=(2) malloc",
            "calls=3 0",
            "12 999",
            "* 5",
            "ob=(2)",
            "fl=(2)",
            "fn=(2)",
            "0 30",
            "totals: 185",
        ]
    )
    costs = instructions.self_costs(text)
    assert costs == Counter(
        {("libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"): 155, ("libc.so.6", "malloc"): 30}
    )


def test_both_servers_are_compared_per_call_by_library_and_function() -> None:
    trivial = instructions.side(
        Counter({("libpython3.11.so.1.0", "eval"): 300_000, ("libc.so.6", "malloc"): 60_000}), 1
    )
    jpki = instructions.side(
        Counter(
            {
                ("libpython3.11.so.1.0", "eval"): 800_000,
                ("libc.so.6", "malloc"): 120_000,
                ("_batch_wire.cpython-311-x86_64-linux-gnu.so", "packed_bytes"): 80_000,
            }
        ),
        2,
    )
    assert jpki[0] == {
        "calls": 2,
        "instructions_per_call": 500_000,
        "by_library": {"python": 400_000, "libc": 60_000, "jpki-va compiled": 40_000},
    }
    compared = instructions.compare(trivial, jpki)
    assert compared["ratio_to_trivial"] == 0.72
    assert compared["over_trivial"] == {"python": 100_000, "jpki-va compiled": 40_000, "libc": 0}
    assert compared["functions"][0] == ["python", "eval", 300_000, 400_000]
    with pytest.raises(instructions.InstructionsError, match="completed no call"):
        instructions.side(Counter(), 0)
    lines = instructions_lines({"check": compared})
    assert "## Instructions per served call (bench/instructions.py)" in lines
    assert "| check | all (ratio 0.720) | 360,000 | 500,000 | +140,000 |" in lines
    assert "| | python | 300,000 | 400,000 | +100,000 |" in lines
    assert instructions_lines(None) == []


def test_a_machine_without_valgrind_is_told_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(instructions.InstructionsError, match=r"apt install valgrind"):
        instructions.valgrind_command()


@needs_valgrind
def test_a_worker_that_exits_under_valgrind_is_one_line_not_a_wait(tmp_path: Path) -> None:
    """A worker that ends before it serves (here: it exits with code 3 at once, under
    valgrind) is reported as soon as it has ended, with its exit code; the load is
    never started."""

    def load(target: str) -> int:
        raise AssertionError("no load without a serving worker")

    def worker(port: int, ready: object, stop: object) -> tuple[object, tuple[object, ...]]:
        return sys.exit, (3,)

    with pytest.raises(instructions.InstructionsError, match=r"before serving \(exit code 3\)"):
        instructions.count_instructions(load, worker, tmp_path)  # type: ignore[arg-type]
