"""The cost ladder's rungs really run the responder's layers (bench/ladder.py).

A rung is only worth its figure if the layer it names is really on: the gate rung
refuses a verifier the registry does not know, exactly as the responder does, and
the rung below it does not. Figures themselves are never asserted.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from jpki_va.bench import ladder
from jpki_va.bench.datagen import BENCH_VERIFIER
from jpki_va.bench.dataset import DataSet
from jpki_va.bench.report import ladder_lines
from jpki_va.bench.suite import check_request, ingest
from jpki_va.bench.trivial import TrivialServer
from jpki_va.core.loopback import VERIFIER_HEADER
from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.responder.index_reader import current_index

pytestmark = pytest.mark.slow

CANNED = va_pb2.CheckResponse(status=va_pb2.CertificateStatus(status=va_pb2.CERT_STATUS_GOOD))


@pytest.fixture(scope="module")
def spec(small_dataset: DataSet) -> ladder.RungSpec:
    if current_index(small_dataset.responder_dir / "index") is None:
        ingest(small_dataset)
    return ladder.RungSpec(str(small_dataset.responder_dir / "index"), BENCH_VERIFIER, threads=4)


@pytest.fixture
def request_for(small_dataset: DataSet) -> va_pb2.CheckRequest:
    kind, serial = small_dataset.pool().good[0]
    return check_request(kind, serial)


def _stub(rung: TrivialServer) -> Iterator[va_pb2_grpc.StatusServiceStub]:
    with grpc.insecure_channel(rung.target) as channel:
        yield va_pb2_grpc.StatusServiceStub(channel)


@pytest.mark.parametrize(("name", "gated"), [("health+reflection", False), ("lookup", True)])
def test_a_rung_runs_the_layers_it_names(
    spec: ladder.RungSpec, request_for: va_pb2.CheckRequest, name: str, gated: bool
) -> None:
    rung = ladder.start_rung(name, 1, spec, CANNED.SerializeToString(), b"\x30\x00")
    try:
        for stub in _stub(rung):
            assert stub.Check(request_for, timeout=10) == CANNED
            batch = va_pb2.CheckBatchRequest(requests=[request_for] * 3)
            (answer,) = stub.CheckStream(iter([batch]), timeout=10)
            assert len(answer.results) == 3
            stranger = ((VERIFIER_HEADER, "nobody-registered"),)
            if gated:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Check(request_for, metadata=stranger, timeout=10)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            else:
                assert stub.Check(request_for, metadata=stranger, timeout=10) == CANNED
    finally:
        rung.stop()


def test_an_unknown_rung_is_refused(spec: ladder.RungSpec) -> None:
    with pytest.raises(ValueError, match="unknown rung"):
        ladder.start_rung("everything", 1, spec, b"", b"")


def test_the_report_shows_what_each_rung_adds() -> None:
    rows = [
        {"rung": "trivial", "rate": 1000.0, "ratio_to_trivial": 1.0, "cpu_us_per_item": 100.0},
        {"rung": "ledger", "rate": 800.0, "ratio_to_trivial": 0.8, "cpu_us_per_item": 130.0},
    ]
    text = "\n".join(ladder_lines({"check": rows}))
    assert "| ledger | 800 | 0.800 | 130.0 | 30.0 |" in text
