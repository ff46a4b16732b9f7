"""`bench soak` on a tiny data set, briefly: every answer judged, a worker killed.

The real signer and responder (2 workers) from the data set; the soak's own losses,
verifier changes and worker kill; zero wrong answers and no error outside the kill's
window are required, as the 10-minute run in BENCHMARKS.md requires them, while the
client opens a new stream within the responder's batches per stream.
"""

from __future__ import annotations

import pytest

from jpki_va.bench.dataset import DataSet
from jpki_va.bench.report import render_soak
from jpki_va.bench.soak import SoakSettings, Tally, run_soak

pytestmark = pytest.mark.slow

STREAM_BATCHES = 25


def test_a_short_soak_gives_no_wrong_answer(small_dataset: DataSet) -> None:
    settings = SoakSettings(
        duration=24.0,
        kill_at=8.0,
        loss_every=2.0,
        churn_every=6.0,
        bound=10.0,
        sample_every=2.0,
        unary_threads=2,
        stream_batch=20,
        stream_batches=STREAM_BATCHES,
    )
    # The responder ends a stream after its --max-stream-batches; the soak's client must
    # open a new one before that (a stream that ran into it was the 600 s soak's two
    # unexpected CheckStream errors), here a few times a second.
    results = run_soak(
        small_dataset,
        settings,
        progress=lambda _text: None,
        max_stream_batches=STREAM_BATCHES + 5,
    )
    assert results["wrong_answers"] == 0, results["wrong_examples"]
    assert {"late_answers", "late_verifier_decisions"} <= results.keys()
    assert len(results["private_memory_last_mb"]) == 3  # two workers and the one restarted
    assert results["unexpected_errors"] == {}, results
    assert results["worker_kills"] == 1
    assert results["losses_recorded"] >= 5
    assert results["losses_watched"] == results["losses_recorded"]
    assert results["verifier_changes"] >= 2
    for interface in ("check", "stream", "http_ocsp", "watch", "churn"):
        assert results["answers"].get(interface, 0) > 0, (interface, results["answers"])
    slopes = results["private_memory_slope_by_worker"]
    assert slopes and results["private_memory_slope_mb_per_min"] in slopes.values()
    assert len(results["private_memory_peak_mb"]) == 3
    report = render_soak(results)
    assert "## Soak" in report
    assert all(f"{pid}: " in report for pid in slopes)  # each worker's slope is reported


def test_an_unexpected_error_keeps_its_message_and_a_fault_window_error_does_not() -> None:
    tally = Tally()
    tally.error("CheckStream INVALID_ARGUMENT", 50.0, [10.0], 10.0, "a record key is 21 bytes")
    tally.error("Check UNAVAILABLE", 15.0, [10.0], 10.0, "worker gone")  # the kill's window
    assert tally.unexpected_errors == {"CheckStream INVALID_ARGUMENT": 1}
    assert tally.fault_errors == 1
    assert tally.error_examples == ["CheckStream INVALID_ARGUMENT: a record key is 21 bytes"]
