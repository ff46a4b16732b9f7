"""The profile step (bench/profile.py): perf's report read into µs per call by library
and function, both servers compared, the report's lines; and perf itself sampling a
real busy process, where this machine has perf and lets it sample."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from jpki_va.bench import profile
from jpki_va.bench.report import profile_lines

# `perf report -F sample,dso,sym -t '|'` as perf 6.1 writes it.
REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 8K of event 'cpu-clock:pppH'
#
# Samples  |Shared Object|Symbol
#
  1200     |libpython3.11.so.1.0                          |[.] _PyEval_EvalFrameDefault
  300      |[kernel.kallsyms]                             |[k] finish_task_switch.isra.0
  250      |cygrpc.cpython-311-x86_64-linux-gnu.so        |[.] grpc_core::Server::ChannelData
  80       |cpython.cpython-311-x86_64-linux-gnu.so       |[.] mdb_page_get.constprop.0
  40       |libc.so.6                                     |[.] malloc
  20       |_batch_wire.cpython-311-x86_64-linux-gnu.so   |[.] __pyx_pf_packed_bytes
  10       |[unknown]                                     |[.] 0x00007f00
  not a row|
"""


def test_a_report_is_read_as_samples_per_object_and_function() -> None:
    samples = profile.parse_report(REPORT)
    assert samples == {
        ("libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"): 1200,
        ("[kernel.kallsyms]", "finish_task_switch.isra.0"): 300,
        ("cygrpc.cpython-311-x86_64-linux-gnu.so", "grpc_core::Server::ChannelData"): 250,
        ("cpython.cpython-311-x86_64-linux-gnu.so", "mdb_page_get.constprop.0"): 80,
        ("libc.so.6", "malloc"): 40,
        ("_batch_wire.cpython-311-x86_64-linux-gnu.so", "__pyx_pf_packed_bytes"): 20,
        ("[unknown]", "0x00007f00"): 10,
    }
    libraries = {profile.library(dso) for dso, _ in samples}
    assert libraries == {"python", "kernel", "grpc", "lmdb", "libc", "jpki-va compiled", "other"}


def test_each_server_s_cpu_is_split_by_its_samples_and_the_two_compared() -> None:
    trivial = profile.side(
        {"rate": 5000.0, "server_cpu_us_per_item": 200.0},
        Counter(
            {
                ("libpython3.11.so.1.0", "eval"): 100,
                ("cygrpc.so", "poll"): 60,
                ("[kernel.kallsyms]", "switch"): 40,
            }
        ),
    )
    jpki = profile.side(
        {"rate": 4000.0, "server_cpu_us_per_item": 300.0},
        Counter(
            {
                ("libpython3.11.so.1.0", "eval"): 160,
                ("cygrpc.so", "poll"): 60,
                ("[kernel.kallsyms]", "switch"): 40,
                ("cpython.cpython-311.so", "get"): 40,
            }
        ),
    )
    assert trivial[0]["by_library"] == {"python": 100.0, "grpc": 60.0, "kernel": 40.0}
    assert jpki[0]["by_library"] == {"python": 160.0, "grpc": 60.0, "kernel": 40.0, "lmdb": 40.0}
    compared = profile.compare(trivial, jpki, top=2)
    assert compared["over_trivial"] == {"python": 60.0, "lmdb": 40.0, "grpc": 0.0, "kernel": 0.0}
    assert list(compared["over_trivial"]) == ["python", "lmdb", "grpc", "kernel"]
    assert compared["functions"] == [["python", "eval", 100.0, 160.0], ["lmdb", "get", 0.0, 40.0]]
    assert compared["trivial"]["samples"] == 200 and compared["jpki-va"]["samples"] == 300
    text = "\n".join(profile_lines({"check": compared}))
    assert "| check | all | 200.0 | 300.0 | +100.0 |" in text
    assert "| | python | 100.0 | 160.0 | +60.0 |" in text
    assert "| | lmdb | 0.0 | 40.0 | +40.0 |" in text
    assert "- python `eval`: 100.00 → 160.00" in text
    assert profile_lines(None) == [] and profile_lines({}) == []


def test_without_perf_the_step_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(profile.ProfileError, match="apt install linux-perf"):
        profile.perf_command()


def test_perf_samples_a_busy_process_where_it_may(tmp_path: Path) -> None:
    if shutil.which("perf") is None:
        pytest.skip("perf is not installed here (./tasks bench installs it)")
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"]
    )
    try:
        time.sleep(0.3)

        def load() -> dict[str, float]:
            time.sleep(1.0)
            return {"rate": 1.0, "server_cpu_us_per_item": 1000.0}

        out = tmp_path / "perf.data"
        try:
            result, samples = profile.sampled(profile.perf_command(), [busy.pid], out, load)
        except profile.ProfileError as exc:
            pytest.skip(f"perf may not sample here: {exc}")
    finally:
        busy.kill()
        busy.wait()
    figures, _ = profile.side(result, samples)
    assert figures["samples"] > 200  # ~2,000 a second
    assert figures["by_library"]["python"] > 500  # a loop of Python is the interpreter's
