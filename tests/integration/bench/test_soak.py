"""`bench soak` on a tiny data set, briefly: every answer judged, a worker killed.

The real signer and responder (2 workers) from the data set; the soak's own losses,
verifier changes and worker kill; zero wrong answers and no error outside the kill's
window are required, as the 10-minute run in BENCHMARKS.md requires them, while the
client opens a new stream within the responder's batches per stream.
"""

from __future__ import annotations

import random

import pytest

from jpki_va.bench.dataset import DataSet
from jpki_va.bench.report import render_soak
from jpki_va.bench.soak import SoakSettings, Tally, _pool, run_soak
from jpki_va.bench.suite import RunningVa, check_request
from jpki_va.core.domain import CertKind, Status

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


def test_the_soak_finds_the_good_certificates_it_will_lose(small_dataset: DataSet) -> None:
    """The sample it judges is the same draw every run, so earlier soaks have lost its
    own good CARD_AUTH certificates: the soak looks through the rest of the pool for as
    many as it will record losses, each GOOD as the responder answers now, and says
    when the data set has too few (a soak that recorded no loss judged no freshness)."""
    va = RunningVa(small_dataset, 1)
    try:
        va.start()
        # A sample of a fifth of the pool's good certificates, as 2,000 of a large one.
        good = len(small_dataset.pool().good) // 5
        _, sampled = _pool(small_dataset, va, random.Random(7), 10.0, 0, good)
        needed = len(sampled) + 5
        truth, spare = _pool(small_dataset, va, random.Random(7), 10.0, needed, good)
        assert len(spare) >= needed and len(set(spare)) == len(spare)
        assert set(sampled) <= set(spare)
        status = va.status_stub()
        for serial in spare:
            assert truth.base[(CertKind.CARD_AUTH, serial)] is Status.GOOD
            reply = status.Check(check_request(CertKind.CARD_AUTH, serial), timeout=10)
            assert Status(reply.status.status) is Status.GOOD
        too_many = len(small_dataset.pool().good) + 1
        with pytest.raises(ValueError, match="bench datagen --force"):
            _pool(small_dataset, va, random.Random(7), 10.0, too_many, good)
    finally:
        va.close()
