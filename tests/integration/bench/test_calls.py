"""The calls step counts what the served workers really run (bench/calls.py).

Its figure is only worth something if the hook sees grpc's pool threads, where the
handlers run, in the real responder worker and in the trivial one. Counts are
checked for the functions each call must pass through; figures are never asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jpki_va.bench import calls
from jpki_va.bench.dataset import DataSet
from jpki_va.bench.loadgen import Interface, LoadSpec, build_payloads, run_load
from jpki_va.bench.mix import Mix
from jpki_va.bench.report import calls_lines
from jpki_va.bench.suite import RunningVa, _canned, _issuers, _responder_config, ingest
from jpki_va.protos import va_pb2
from jpki_va.server.responder.index_reader import current_index

pytestmark = pytest.mark.slow

IN_FLIGHT = 4  # calls the load keeps in flight


def _loader(payloads: list[bytes]) -> Callable[[str, Interface], None]:
    """What `count_calls` runs: 3 s of one interface's load on a target."""

    def run(target: str, interface: Interface) -> None:
        spec = LoadSpec(
            target=target,
            interface=interface,
            duration=3.0,
            processes=1,
            concurrency=IN_FLIGHT,
            channels=1,
        )
        assert run_load("calls", spec, payloads).calls > 0

    return run


def test_each_worker_counts_the_calls_its_handlers_make(
    small_dataset: DataSet, tmp_path: Path
) -> None:
    if current_index(small_dataset.responder_dir / "index") is None:
        ingest(small_dataset)
    run = _loader(
        build_payloads("check", small_dataset.pool(), Mix(), _issuers(small_dataset), count=200)
    )

    canned = va_pb2.CheckResponse(
        status=va_pb2.CertificateStatus(status=va_pb2.CERT_STATUS_GOOD)
    ).SerializeToString()
    trivial = calls.count_calls(
        run, calls.trivial_worker(2, canned, b"\x30\x00"), "check", 1.0, tmp_path, "trivial"
    )
    config = _responder_config(small_dataset, 1, None)
    jpki = calls.count_calls(
        run, calls.responder_worker(config, 1), "check", 1.0, tmp_path, "jpki-va"
    )
    # Every Check served went through the gate and the ledger: counted in the pool threads
    # (give or take the calls in flight when the window opened or closed).
    served = jpki["status_servicer.py:StatusServicer.Check"]
    assert served > 0
    for passed in ("gate.py:Gate.identify", "provisions.py:Ledger.record_one"):
        assert abs(jpki[passed] - served) <= IN_FLIGHT, passed
    assert "status_servicer.py:StatusServicer.Check" not in trivial
    assert trivial["trivial.py:TrivialServicer.Check"] > 0
    figures = calls.compare(trivial, jpki, "check")
    assert figures["jpki-va"]["python_calls"] > figures["trivial"]["python_calls"] > 0
    assert figures["differences"]
    with pytest.raises(RuntimeError, match="no call reached"):
        calls.compare(trivial, trivial, "check")
    text = "\n".join(calls_lines({"check": figures}))
    python = [name for name, _ in figures["differences"] if not name.startswith("C:")]
    assert "| check |" in text and f"`{python[0]}`" in text


def test_the_ocsp_count_says_what_share_of_requests_the_cache_missed(
    small_dataset: DataSet, tmp_path: Path
) -> None:
    """Each served Ocsp request is either answered from the worker's cache or missed:
    the share reported as `misses` and the hits add up to every request. The counted
    worker signs with the running replica's OCSP key, as in the bench."""
    if current_index(small_dataset.responder_dir / "index") is None:
        ingest(small_dataset)
    # Half the draws from a hot set of three, and more requests than the window serves:
    # hits as well as misses.
    mix = Mix(hot=0.5, hot_size=3)
    run = _loader(
        build_payloads("ocsp", small_dataset.pool(), mix, _issuers(small_dataset), count=5000)
    )

    va = RunningVa(small_dataset, 1)
    try:
        va.start()
        check, ocsp_der = _canned(va, small_dataset)
        trivial = calls.count_calls(
            run, calls.trivial_worker(2, check, ocsp_der), "ocsp", 1.0, tmp_path, "trivial"
        )
        config = _responder_config(small_dataset, 1, None)
        jpki = calls.count_calls(
            run, calls.responder_worker(config, 1), "ocsp", 1.0, tmp_path, "jpki-va"
        )
    finally:
        va.close()
    figures = calls.compare(trivial, jpki, "ocsp")
    misses = figures["jpki-va"]["misses"]
    served = jpki["status_servicer.py:StatusServicer.Ocsp"]
    hits = jpki.get("ocsp.py:OcspResponder.reuse", 0) / served
    assert 0 < misses < 1 and 0 < hits < 1
    assert abs(misses + hits - 1) <= 2 * IN_FLIGHT / served
    assert "misses" not in figures["trivial"]
    assert "| ocsp |" in "\n".join(calls_lines({"ocsp": figures}))
