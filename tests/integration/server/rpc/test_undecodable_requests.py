"""Bytes that are no protobuf message get INVALID_ARGUMENT on every method, and no
traceback in the log (issue 15, item 11).

grpc itself would log every undecodable message as an ERROR with a traceback and
answer INTERNAL. Each method of every service the responder and the signer serve
(health and reflection included) is sent raw garbage through a channel without a
serializer; the responder runs as its own process, so its log is read whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import ModuleType

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from jpki_va.core.domain import CertKind
from jpki_va.protos import crl_pb2, mapping_pb2, record_pb2, signer_pb2, va_pb2, verifiers_pb2
from tests.support import CliResponder, Pki, start_cli_responder

#: A length-delimited field 1 that claims 5 bytes and has 2: no message type parses it.
GARBAGE = b"\x0a\x05ab"
COMMON = (health_pb2, reflection_pb2)
RESPONDER = (va_pb2, crl_pb2, mapping_pb2, record_pb2, verifiers_pb2, *COMMON)
SIGNER = (signer_pb2, *COMMON)


def _methods(modules: tuple[ModuleType, ...], skip: str = "") -> list[MethodDescriptor]:
    return [
        method
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        if service.name != skip
        for method in service.methods
    ]


def _name(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}.{method.name}"


def _send_garbage(channel: grpc.Channel, method: MethodDescriptor) -> grpc.StatusCode:
    """The status a call of `method` with GARBAGE as its message ends with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw = {"request_serializer": None, "response_deserializer": None}  # bytes as they are
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **raw)(iter([GARBAGE]), timeout=10))
        elif method.client_streaming:
            channel.stream_unary(path, **raw)(iter([GARBAGE]), timeout=10)
        elif method.server_streaming:
            list(channel.unary_stream(path, **raw)(GARBAGE, timeout=10))
        else:
            channel.unary_unary(path, **raw)(GARBAGE, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def responder(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliResponder]:
    pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    base = tmp_path_factory.mktemp("undecodable")
    running = start_cli_responder(pki, base / "state", base / "responder.log")
    try:
        yield running
    finally:
        running.stop()


def test_every_responder_method_answers_garbage_with_invalid_argument(
    responder: CliResponder,
) -> None:
    methods = _methods(RESPONDER)
    assert len(methods) >= 12  # the five services, health and reflection
    with grpc.insecure_channel(responder.address) as channel:
        codes = {_name(m): _send_garbage(channel, m) for m in methods}
    assert codes == dict.fromkeys(codes, grpc.StatusCode.INVALID_ARGUMENT)
    log = responder.log()
    assert "Traceback" not in log
    assert "Exception deserializing" not in log
    # Said, once, not per message (more are counted: see the HTTP refusal test).
    assert log.count("undecodable gRPC request") == 1, log


def test_garbage_in_a_stream_after_good_messages_is_invalid_argument(
    responder: CliResponder,
) -> None:
    good = va_pb2.CheckBatchRequest(
        requests=[
            va_pb2.CheckRequest(
                cert=va_pb2.CertRef(
                    kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_AUTH, serial=b"\x01")
                )
            )
        ]
    ).SerializeToString()
    replies: list[bytes] = []
    with grpc.insecure_channel(responder.address) as channel:
        call = channel.stream_stream(
            "/jpki.va.v1.StatusService/CheckStream",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as raised:
            replies.extend(call(iter([good, GARBAGE, good]), timeout=10))
    assert len(replies) == 1 and replies[0]  # the good batch before it is answered
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CheckBatchRequest" in (raised.value.details() or "")
    assert "Traceback" not in responder.log()


def test_every_signer_method_answers_garbage_with_invalid_argument(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    methods = _methods(SIGNER)
    with (
        caplog.at_level(logging.DEBUG),
        grpc.insecure_channel(f"127.0.0.1:{pki.signer.port}") as channel,
    ):
        codes = {_name(m): _send_garbage(channel, m) for m in methods}
    assert codes == dict.fromkeys(codes, grpc.StatusCode.INVALID_ARGUMENT)
    assert [r for r in caplog.records if r.exc_info] == []
    assert "deserializ" not in caplog.text
