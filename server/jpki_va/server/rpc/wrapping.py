"""The base of the server's interceptors: wrap each method's handler once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # the stubs make it generic; the runtime class is not subscriptable
    Interceptor = grpc.ServerInterceptor

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
Continuation = Callable[[grpc.HandlerCallDetails], "Handler | None"]


class WrappingInterceptor(Interceptor):
    """An interceptor that wraps each method's handler, once per method.

    grpc asks every interceptor for the handler on every call; the continuation
    gives the same handler for a method each time, so the wrapper made for it the
    first time is kept and returned again, instead of new closures and a new handler
    per call.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def wrap(self, handler: Handler, method: str) -> Handler:
        raise NotImplementedError

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)  # a race only wraps twice
        return wrapped


class Folded(WrappingInterceptor):
    """Several wrapping interceptors as one: grpc runs one interceptor per call, not N.

    grpc walks its interceptors on every call, each through a continuation made for
    that call; the layers here only wrap a method's handler (once), so composing
    their wraps gives the same handler and the same behaviour for one step a call.
    """

    def __init__(self, layers: Sequence[WrappingInterceptor]) -> None:
        super().__init__()
        self._layers = tuple(reversed(layers))  # innermost wraps first

    def wrap(self, handler: Handler, method: str) -> Handler:
        for layer in self._layers:
            handler = layer.wrap(handler, method)
        return handler


def fold(interceptors: Sequence[Interceptor]) -> list[Interceptor]:
    """`interceptors` (outermost first) with each run of wrapping ones made one."""
    out: list[Interceptor] = []
    run: list[WrappingInterceptor] = []
    for interceptor in (*interceptors, None):
        if isinstance(interceptor, WrappingInterceptor):
            run.append(interceptor)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else Folded(run))
            run = []
        if interceptor is not None:
            out.append(interceptor)
    return out
