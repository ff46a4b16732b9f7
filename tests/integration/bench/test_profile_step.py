"""The bench's `profile` step on a real signer, responder and trivial server: each
server's worker CPU per served call split by library from perf's samples. Figures are
never asserted; that both servers were sampled under load, and the report's section,
are. Skipped where perf is missing or may not sample (it needs root or
`kernel.perf_event_paranoid` <= 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jpki_va.bench import profile
from jpki_va.bench.dataset import DataSet
from jpki_va.bench.report import write_report
from jpki_va.bench.suite import SuiteSettings, run_suite

pytestmark = pytest.mark.slow


def test_each_server_s_cpu_per_call_is_split_by_library(
    small_dataset: DataSet, tmp_path: Path
) -> None:
    if shutil.which("perf") is None:
        pytest.skip("perf is not installed here (./tasks bench installs it)")
    settings = SuiteSettings(
        workers=1,
        grpc_threads=4,
        duration=1.5,
        processes=1,
        concurrency=4,
        stream_concurrency=1,
        channels=1,
        batch=20,
        steps=("profile",),
    )
    try:
        results = run_suite(small_dataset, settings, lambda text: None)
    except profile.ProfileError as exc:
        pytest.skip(f"perf may not sample here: {exc}")
    figures = results["profile"]
    assert set(figures) == {"check", "stream", "ocsp"}
    for interface, compared in figures.items():
        for server in ("trivial", "jpki-va"):
            side = compared[server]
            assert side["rate"] > 0 and side["samples"] > 50, (interface, server, side)
            # The split is of the measured CPU per call: its parts add up to it.
            assert sum(side["by_library"].values()) == pytest.approx(
                side["cpu_us_per_item"], rel=0.01
            )
            assert side["by_library"]["python"] > 0  # both servers run grpc's Python
        assert compared["functions"] and set(compared["over_trivial"]) >= {"python", "grpc"}
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    text = write_report(results_file, tmp_path / "BENCHMARKS.md").read_text()
    assert "## Where a served call's CPU goes, by library (bench/profile.py)" in text
    assert "| check | all |" in text
