"""Interceptors wrap a method's handler once, when it is added, and see every call."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.rpc import server_common
from jpki_va.server.rpc.wrapping import Handler, WrappingInterceptor


class Counting(WrappingInterceptor):
    def __init__(self) -> None:
        super().__init__()
        self.wraps: list[str] = []
        self.calls = 0

    def wrap(self, handler: Handler, method: str) -> Handler:
        self.wraps.append(method)
        inner = handler.unary_unary
        if inner is None:  # CheckStream: not counted here
            return handler

        def unary_unary(request: object, context: grpc.ServicerContext) -> object:
            self.calls += 1
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )


class Refusing(va_pb2_grpc.StatusServiceServicer):
    def ListIssuers(
        self, request: va_pb2.ListIssuersRequest, context: grpc.ServicerContext
    ) -> va_pb2.ListIssuersResponse:
        raise ValueError("no issuers here")


@pytest.fixture
def served() -> Iterator[tuple[va_pb2_grpc.StatusServiceStub, Counting]]:
    counting = Counting()
    server = server_common.build_server(
        max_workers=2,
        mapping=[(ValueError, grpc.StatusCode.INVALID_ARGUMENT)],
        interceptors=[counting],
    )
    servicer = Refusing()  # type: ignore[abstract]  # only ListIssuers is called
    va_pb2_grpc.add_StatusServiceServicer_to_server(servicer, server)
    port = server_common.bind(server, "127.0.0.1:0", None)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield va_pb2_grpc.StatusServiceStub(channel), counting
    finally:
        channel.close()
        server.stop(None).wait()


def test_a_method_is_wrapped_once_and_every_call_goes_through(
    served: tuple[va_pb2_grpc.StatusServiceStub, Counting],
) -> None:
    stub, counting = served
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=10)
        # The error mapping (itself a WrappingInterceptor) still applies to each call.
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "no issuers here"
    assert counting.calls == 5
    # Wrapped when the service was added, each method once, none again per call.
    service = va_pb2.DESCRIPTOR.services_by_name["StatusService"]
    assert sorted(counting.wraps) == sorted(
        f"/{service.full_name}/{m.name}" for m in service.methods
    )


class Answering(va_pb2_grpc.StatusServiceServicer):
    def __init__(self) -> None:
        self.contexts: list[type] = []

    def ListIssuers(
        self, request: va_pb2.ListIssuersRequest, context: grpc.ServicerContext
    ) -> va_pb2.ListIssuersResponse:
        self.contexts.append(type(context))
        return va_pb2.ListIssuersResponse()


def test_the_worker_trailer_is_stored_on_grpcs_own_context_and_arrives() -> None:
    """The error mapping stores the worker trailer on grpc's servicer context itself
    (`GRPC_CONTEXT`, without the call's lock): the pinned grpcio's context is that
    class, so every call takes that path, and the trailer arrives as when it was set
    through `set_trailing_metadata`, on an answer and on a mapped refusal alike."""
    answering = Answering()  # type: ignore[abstract]  # only ListIssuers is called
    server = server_common.build_server(
        max_workers=2, mapping=[(ValueError, grpc.StatusCode.INVALID_ARGUMENT)], served_by="w7"
    )
    va_pb2_grpc.add_StatusServiceServicer_to_server(answering, server)
    refusing = server_common.build_server(
        max_workers=2, mapping=[(ValueError, grpc.StatusCode.INVALID_ARGUMENT)], served_by="w8"
    )
    va_pb2_grpc.add_StatusServiceServicer_to_server(Refusing(), refusing)  # type: ignore[abstract]
    ports = [server_common.bind(s, "127.0.0.1:0", None) for s in (server, refusing)]
    for s in (server, refusing):
        s.start()
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    try:
        _, call = va_pb2_grpc.StatusServiceStub(channels[0]).ListIssuers.with_call(
            va_pb2.ListIssuersRequest(), timeout=10
        )
        assert dict(call.trailing_metadata() or ())[server_common.SERVED_BY] == "w7"
        assert answering.contexts == [server_common.GRPC_CONTEXT]
        with pytest.raises(grpc.RpcError) as caught:
            va_pb2_grpc.StatusServiceStub(channels[1]).ListIssuers(
                va_pb2.ListIssuersRequest(), timeout=10
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        error: grpc.Call = caught.value  # type: ignore[assignment]  # a call's error is one
        assert dict(error.trailing_metadata() or ())[server_common.SERVED_BY] == "w8"
    finally:
        for channel in channels:
            channel.close()
        for s in (server, refusing):
            s.stop(None).wait()
