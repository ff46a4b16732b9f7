"""The gRPC interceptor that times and counts every call into the worker's metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc

from jpki_va.server.responder.metrics import WorkerMetrics
from jpki_va.server.rpc.wrapping import Handler, WrappingInterceptor


class MetricsInterceptor(WrappingInterceptor):
    """Counts and times every gRPC call by method and final status code."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap(self, handler: Handler, method: str) -> Handler:
        method = method.rsplit("/", 1)[-1]
        record = self._metrics.grpc_call
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary
            # The usual outcome's observer bound here: such a call runs it alone and
            # looks up no key (`grpc_call` is a call more and a key lookup).
            observe_ok = self._metrics.observer(self._metrics.grpc_key(method, "OK"))

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    return inner_uu(request, context)
                finally:
                    # A handler may set a code and return (grpc's health servicer does).
                    # ServicerContext.code() exists at run time (grpcio >= 1.38); the
                    # stubs lack it.
                    code = context.code()  # type: ignore[attr-defined]
                    if code is None:
                        observe_ok(time.perf_counter() - start)
                    else:
                        record(method, code.name, time.perf_counter() - start)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        inner = handler.unary_stream or handler.stream_stream
        if inner is None:
            return handler

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            try:
                yield from inner(request, context)
            finally:
                code = context.code()  # type: ignore[attr-defined]
                record(method, "OK" if code is None else code.name, time.perf_counter() - start)

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream is not None
            else grpc.stream_stream_rpc_method_handler
        )
        return make(streaming, handler.request_deserializer, handler.response_serializer)
