"""Wrapping layers folded into one keep their order and their memo."""

from __future__ import annotations

from typing import Any, cast

import grpc

from jpki_va.server.rpc.wrapping import Folded, Handler, WrappingInterceptor


class Tagging(WrappingInterceptor):
    """Appends its tag to a trace on the way in, as a real layer would wrap."""

    def __init__(self, tag: str, trace: list[str]) -> None:
        super().__init__()
        self.tag = tag
        self.trace = trace
        self.wraps = 0

    def wrap(self, handler: Handler, method: str) -> Handler:
        self.wraps += 1
        inner = handler.unary_unary
        assert inner is not None

        def unary_unary(request: Any, context: Any) -> Any:
            self.trace.append(self.tag)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary)


def test_the_folded_handler_runs_the_layers_outermost_first_and_is_made_once() -> None:
    trace: list[str] = []
    layers = [Tagging(tag, trace) for tag in ("outer", "middle", "inner")]
    folded = Folded(layers)
    base = grpc.unary_unary_rpc_method_handler(lambda request, context: request * 2)
    for _ in range(3):
        handler = folded.wrapped(base, "/svc/M")
        assert handler is not None and handler.unary_unary is not None
        assert handler.unary_unary(21, cast(grpc.ServicerContext, None)) == 42
    assert trace == ["outer", "middle", "inner"] * 3
    assert [layer.wraps for layer in layers] == [1, 1, 1]
