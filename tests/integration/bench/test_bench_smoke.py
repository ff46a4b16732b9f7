"""The whole harness on a tiny data set, a second per figure, so it cannot rot.

Real signer, real responder (2 workers), real trivial server, real client
processes; figures are asserted to exist and to carry no errors, never speeds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from jpki_va.bench import cli as bench_cli
from jpki_va.bench.dataset import DataSet
from jpki_va.bench.httpload import HttpSpec
from jpki_va.bench.lookup import sample_keys
from jpki_va.bench.report import write_report
from jpki_va.bench.suite import SuiteSettings, ingest, run_suite
from jpki_va.server.cmd.main import main as jpki_main
from jpki_va.server.responder.status import IndexHolder

pytestmark = pytest.mark.slow


def _no_errors(figure: dict[str, Any]) -> None:
    assert figure["calls"] > 0, figure
    assert figure["error_count"] == 0, figure
    assert figure["latency_ms"]["p50"] > 0


def test_suite_smoke(small_dataset: DataSet, tmp_path: Path) -> None:
    settings = SuiteSettings(
        workers=2,
        duration=1.0,
        grpc_rounds=2,
        processes=1,
        concurrency=4,
        stream_concurrency=1,
        channels=2,
        batch=20,
        store_seconds=0.3,
        http=HttpSpec(duration=1, threads=1, connections=4),
        freshness_samples=1,
        delta_losses=5,
        fleet_samples=2,
        failover_seconds=3.0,
    )
    results = run_suite(small_dataset, settings)
    for interface in ("check", "stream", "ocsp"):
        for server in ("trivial", "jpki-va"):
            _no_errors(results["grpc"][interface][server])
        figures = results["grpc"][interface]
        assert figures["ratio_to_trivial"] > 0
        # Two rounds, each a ratio; the figures are one of them (the upper median).
        ratios = [pair["ratio_to_trivial"] for pair in figures["rounds"]]
        assert len(ratios) == 2 and figures["ratio_to_trivial"] == max(ratios)
    assert results["ingest"]["records"] == small_dataset.info()["certificate_total"]
    assert results["store"]["raw_lmdb_get"]["per_second"] > 0
    assert results["store"]["status_source"]["per_second"] > 0
    assert results["start_to_serving_seconds"] > 0
    for key in ("rss_after_load", "rss_after_http"):
        memory = results[key]
        assert memory["max_vmrss_mb"] > 0 and memory["max_pss_mb"] > 0
        for worker in memory["workers"]:  # the split adds up (rounding aside)
            split = worker["RssAnon"] + worker["RssFile"] + worker["RssShmem"]
            assert abs(worker["VmRSS"] - split) <= 0.3
    if shutil.which("wrk"):  # the responder always serves HTTP OCSP in the bench
        _no_errors(results["http_ocsp"]["jpki-va-warmup"])
        _no_errors(results["http_ocsp"]["jpki-va"])
    for peer in ("cfssl", "openssl", "jpki-va"):
        figure = results["http_ocsp"][peer]
        if "skipped" not in figure:  # wrk, cfssl or a network namespace may be missing
            _no_errors(figure)
    fleet = results["fleet"]
    for target in ("balancer", "one_replica"):
        _no_errors(fleet[target])
    assert fleet["freshness"]["samples"] == 2
    assert set(fleet["freshness"]["p99_seconds"]) == {0, 1, 2}
    blip = fleet["failover"]
    assert blip["grpc"]["calls"] > 0 and blip["http_ocsp"]["calls"] > 0
    assert blip["grpc"]["failed"] == 0 and blip["http_ocsp"]["failed"] == 0, blip
    fresh = results["freshness"]
    assert len(fresh["commit_to_answer_seconds"]) == 1
    assert fresh["losses"]["count"] == 5 and fresh["losses"]["all_sampled_revoked"]
    assert fresh["delta_apply"]["deltas"] and fresh["delta_apply"]["largest_losses"] >= 1

    # A responder starting from nothing now builds the full index and applies the
    # deltas the freshness step made the signer publish; a second run starts from there.
    again = ingest(small_dataset)
    assert again["deltas_after"] >= 1 and again["records"] == results["ingest"]["records"]
    second = run_suite(
        small_dataset,
        SuiteSettings(
            workers=1,
            duration=0.5,
            processes=1,
            concurrency=2,
            stream_concurrency=1,
            batch=10,
            freshness_samples=1,
            delta_losses=2,
            steps=("ingest", "freshness", "lookup"),
        ),
    )
    assert second["ingest"]["deltas_after"] >= 1
    assert second["freshness"]["delta_apply"]["deltas"]
    # Fewer certificates than a batch's 100 would be one batch of all of them.
    looked = second["status_lookup"]
    records = small_dataset.info()["certificate_total"]
    assert looked["records"] == records and looked["batch"] == min(100, records)
    assert looked["keys"] == records // looked["batch"] * looked["batch"]
    assert all(looked[key] > 0 for key in looked if key.startswith("cpu_us"))
    assert looked["compiled"] and looked["walked"]  # the install builds the compiled modules
    _drawn_keys_are_distinct_and_held(small_dataset, records)

    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    report = write_report(results_file, tmp_path / "BENCHMARKS.md")
    text = report.read_text()
    assert "Ratio to the ceiling" in text and "## Targets" in text
    assert (tmp_path / "benchmarks.png").stat().st_size > 0


def _drawn_keys_are_distinct_and_held(ds: DataSet, records: int) -> None:
    """The lookup step's sample: distinct keys the index holds, every one when asked
    for more than it has."""
    holder = IndexHolder(ds.responder_dir / "index")
    holder.refresh()
    try:
        index = holder.get()
        some, seen = sample_keys(index, 50)
        assert seen == records and len(some) == len(set(some)) == 50
        assert None not in index.get_values(some)[0]
        every, _ = sample_keys(index, records + 10)
        assert sorted(every) == index.keys_after(b"", records + 10)
    finally:
        holder.close()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        jpki_main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_cli_refuses_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["bench", "compare", "--dir", str(tmp_path / "none")], capsys)
    assert code == 2 and "bench datagen" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(["bench", "report", "--results", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = _run(
        ["bench", "compare", "--dir", str(tmp_path), "--steps", "grpc,bogus"], capsys
    )
    assert code == 2
    with pytest.raises(SystemExit) as exit_info:
        jpki_main(["bench", "datagen", "--holders", "0", "--out", str(tmp_path / "d")])
    assert exit_info.value.code == 2
    assert "positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        jpki_main(["bench", "load", "--dir", str(tmp_path), "--mix", "good=x"])
    assert "needs a number" in capsys.readouterr().err


def test_cli_load_against_a_running_responder(
    small_dataset: DataSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench load` starts the real responder from the data set and loads one interface."""
    out = tmp_path / "load.json"
    code, stdout, _ = _run(
        [
            "bench",
            "load",
            "--dir",
            str(small_dataset.root),
            "--interface",
            "check",
            "--duration",
            "1",
            "--processes",
            "1",
            "--concurrency",
            "4",
            "--rate",
            "200",
            "--json",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stdout
    result = json.loads(out.read_text())
    _no_errors(result)
    assert "calls/s" in stdout


def test_mix_parse() -> None:
    mix = bench_cli._mix("good=1,revoked=0,unknown=0,hot=0.5,hot_size=3")
    assert (mix.good, mix.revoked, mix.hot, mix.hot_size) == (1.0, 0.0, 0.5, 3)
