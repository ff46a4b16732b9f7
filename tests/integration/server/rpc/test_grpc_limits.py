"""Limits on bad input and the error mapping, on real gRPC servers on 127.0.0.1.

The StatusServicer here reads a tiny fake StatusSource (the real one is exercised
end to end in test_status_e2e), so the limits can be small and the calls counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind, Role, Status, Verifier
from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.access.gate import Caller, Gate
from jpki_va.server.app.responder_app import STATUS_ERRORS
from jpki_va.server.ledger.provisions import Ledger
from jpki_va.server.model.verifiers import VerifierTable
from jpki_va.server.responder.metrics import WorkerMetrics
from jpki_va.server.responder.ocsp import OcspResponder
from jpki_va.server.responder.status import Answer, IndexHolder, Resolver
from jpki_va.server.rpc import server_common
from jpki_va.server.rpc.metrics_interceptor import MetricsInterceptor
from jpki_va.server.rpc.status_servicer import StatusServicer, StreamLimits, add_status_service

MAX_MESSAGE = 4096


class CountingSource:
    def __init__(self) -> None:
        self.calls = 0
        self.delay = 0.0

    def status(self, kind: CertKind, serial: int, as_of: datetime) -> Answer:
        self.calls += 1
        time.sleep(self.delay)
        now = datetime.now(UTC)
        return Answer(kind, serial, Status.UNKNOWN, None, as_of, 1, now, now)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[va_pb2_grpc.StatusServiceStub, CountingSource]]:
    source = CountingSource()
    holder = IndexHolder(tmp_path)  # never loaded: only kind+serial requests are used
    resolver = Resolver(holder)
    clock = SystemClock()
    ocsp = OcspResponder(source, resolver, lambda: None, clock)
    verifier = Verifier("bank", frozenset(Role), ())
    ledger = Ledger(tmp_path / "ledger")
    gate = Gate(lambda: VerifierTable([verifier.to_json()]), ledger, clock)
    server = server_common.build_server(
        max_workers=4,
        mapping=STATUS_ERRORS,
        options=[("grpc.max_receive_message_length", MAX_MESSAGE)],
        interceptors=[MetricsInterceptor(WorkerMetrics())],
    )
    add_status_service(
        StatusServicer(
            source,
            resolver,
            ocsp,
            holder,
            clock,
            [],
            gate,
            lambda _context: Caller(claimed_id="bank"),
            StreamLimits(3, 2),
        ),
        server,
    )
    port = server_common.bind(server, "127.0.0.1:0", None)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield va_pb2_grpc.StatusServiceStub(channel), source
    finally:
        channel.close()
        server.stop(None)
        ledger.close()


def batch(size: int) -> va_pb2.CheckBatchRequest:
    ref = va_pb2.CertRef(
        kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x01")
    )
    return va_pb2.CheckBatchRequest(requests=[va_pb2.CheckRequest(cert=ref)] * size)


def test_batch_over_the_limit(served: tuple[Any, CountingSource]) -> None:
    stub, source = served
    with pytest.raises(grpc.RpcError) as info:
        list(stub.CheckStream(iter([batch(4)]), timeout=10))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds 3" in str(info.value.details())
    assert source.calls == 0


def test_empty_batch(served: tuple[Any, CountingSource]) -> None:
    stub, _ = served
    with pytest.raises(grpc.RpcError) as info:
        list(stub.CheckStream(iter([batch(0)]), timeout=10))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "empty batch" in str(info.value.details())


def test_stream_over_the_limit(served: tuple[Any, CountingSource]) -> None:
    stub, source = served
    replies = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in stub.CheckStream(iter([batch(3)] * 3), timeout=10):
            replies.append(reply)
    # A spent quota of the stream, not a bad request: the caller opens another.
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "had its 2 batches; open a new stream" in str(info.value.details())
    assert len(replies) == 2 and source.calls == 6
    assert len(list(stub.CheckStream(iter([batch(3)] * 2), timeout=10))) == 2


def test_a_time_out_of_range_is_a_bad_request(served: tuple[Any, CountingSource]) -> None:
    stub, source = served
    request = batch(1).requests[0]
    request.as_of.seconds = 2**62  # no Timestamp: protobuf's ToDatetime raises ValueError
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(request, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "Timestamp is not valid" in str(info.value.details())
    assert source.calls == 0


def test_stream_stops_at_its_deadline(served: tuple[Any, CountingSource]) -> None:
    stub, source = served
    source.delay = 0.5  # the first answer outlives the deadline
    with pytest.raises(grpc.RpcError) as info:
        list(stub.CheckStream(iter([batch(3)]), timeout=0.3))
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.5)  # what the server would have done with the rest is done by now
    assert source.calls == 1


def test_oversized_message_is_refused_by_grpc(served: tuple[Any, CountingSource]) -> None:
    stub, source = served
    with pytest.raises(grpc.RpcError) as info:
        stub.Ocsp(va_pb2.OcspRequest(der=b"\x30" * (MAX_MESSAGE + 1)), timeout=10)
    # gRPC refuses it before any handler runs, with its own code for the case.
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert source.calls == 0
    assert stub.Check(va_pb2.CheckRequest(cert=batch(1).requests[0].cert), timeout=10)


def _boom(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise RuntimeError("secret detail from /srv/internal/path")


def _boom_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"first"
    raise KeyError("another secret")


def _internal_value_error(request: bytes, context: grpc.ServicerContext) -> bytes:
    # A ValueError of the server's own (a decoder meeting a value it did not expect),
    # not a BadRequest: the caller did nothing wrong.
    return bytes(len(list(zip(request, b"", strict=True))))


def test_unexpected_errors_never_reach_the_client(caplog: pytest.LogCaptureFixture) -> None:
    server = server_common.build_server(max_workers=2, mapping=STATUS_ERRORS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Boom",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_boom),
                    "Stream": grpc.unary_stream_rpc_method_handler(_boom_stream),
                    "Value": grpc.unary_unary_rpc_method_handler(_internal_value_error),
                },
            ),
        )
    )
    port = server_common.bind(server, "127.0.0.1:0", None)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = channel.unary_unary("/test.Boom/Unary", None, None)
            stream = channel.unary_stream("/test.Boom/Stream", None, None)
            value = channel.unary_unary("/test.Boom/Value", None, None)
            calls: list[Callable[[], object]] = [
                lambda: unary(b"x", timeout=10),
                lambda: list(stream(b"x", timeout=10)),
                lambda: value(b"x", timeout=10),
                lambda: value(b"x", timeout=10),
            ]
            with caplog.at_level(logging.ERROR, logger=server_common.__name__):
                for call in calls:
                    with pytest.raises(grpc.RpcError) as info:
                        call()
                    assert info.value.code() is grpc.StatusCode.INTERNAL
                    assert info.value.details() == "internal error"
                    debug = info.value.debug_error_string()  # type: ignore[attr-defined]
                    assert "secret" not in debug and "Traceback" not in debug
    finally:
        server.stop(None)
    # One bounded line per method and exception type in a window, naming what failed
    # and where; the second ValueError is counted, not logged; no traceback.
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 3, lines
    assert all(r.exc_info is None for r in caplog.records)
    (value_line,) = [line for line in lines if "/test.Boom/Value" in line]
    assert value_line.startswith("internal error in /test.Boom/Value (ValueError)")
    assert "in _internal_value_error" in value_line and "test_grpc_limits.py:" in value_line
