"""The bench's `tls` step: the gRPC step and the calls step over real mTLS.

Both servers speak only mTLS with one throwaway server certificate and client CA; the
load presents a certificate the step registers as a verifier at the real signer. The
counts show every served call was identified by its certificate, the short way
(rpc/identity.py). Figures are never asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jpki_va.bench import calls
from jpki_va.bench.dataset import DataSet
from jpki_va.bench.report import write_report
from jpki_va.bench.suite import SuiteSettings, ingest, tls_figures
from jpki_va.server.responder.index_reader import current_index

pytestmark = pytest.mark.slow


def test_grpc_and_calls_over_mtls(
    small_dataset: DataSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if current_index(small_dataset.responder_dir / "index") is None:
        ingest(small_dataset)
    monkeypatch.setattr(calls, "TOP", 1000)  # every function that differs, for the checks
    settings = SuiteSettings(
        workers=1,
        grpc_threads=4,
        duration=1.0,
        processes=1,
        concurrency=4,
        stream_concurrency=1,
        channels=1,
        batch=20,
        calls_seconds=1.0,
        steps=("tls", "calls"),
    )
    figures = tls_figures(small_dataset, settings, lambda text: None)

    for interface in ("check", "stream", "ocsp"):
        for server in ("trivial", "jpki-va"):
            load = figures["grpc"][interface][server]
            assert load["calls"] > 0 and load["error_count"] == 0, load
            assert load["spec"]["tls"] is not None, load["spec"]
        assert figures["grpc"][interface]["ratio_to_trivial"] > 0
    for interface in ("check", "ocsp"):
        counted = dict(figures["calls"][interface]["differences"])
        # Each served call read its caller's certificate, once, and decoded no name of
        # the connection's properties (grpc's public way would decode each).
        assert counted["identity.py:_peer_pem"] == pytest.approx(1.0, abs=0.05)
        assert counted["identity.py:caller_function.<locals>.tls_caller"] == pytest.approx(
            1.0, abs=0.05
        )
        assert counted.get("_common.py:decode", 0.0) <= 0.0

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"grpc_tls": figures}))
    text = write_report(results, tmp_path / "BENCHMARKS.md").read_text()
    assert "## gRPC over mTLS" in text and "### Where the time goes" in text
