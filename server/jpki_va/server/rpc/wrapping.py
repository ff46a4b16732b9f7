"""The base of the server's interceptors: wrap each method's handler once, when it
is added to the server."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # the stubs make them generic; the runtime classes are not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    GenericHandler = grpc.GenericRpcHandler


class WrappingInterceptor:
    """A layer that wraps each method's handler, once per method.

    `WrappingServer` applies it when a service is added, so a call runs the wrapped
    handler with no interceptor pipeline before it (grpc walks that pipeline, through
    a continuation made for the call, on every call).
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def wrap(self, handler: Handler, method: str) -> Handler:
        raise NotImplementedError

    def wrapped(self, handler: Handler, method: str) -> Handler:
        """`wrap(handler, method)`, made once per method and handler."""
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)  # a race only wraps twice
        return wrapped


class Folded(WrappingInterceptor):
    """Several wrapping layers as one (outermost first): their wraps composed."""

    def __init__(self, layers: Sequence[WrappingInterceptor]) -> None:
        super().__init__()
        self._layers = tuple(reversed(layers))  # innermost wraps first

    def wrap(self, handler: Handler, method: str) -> Handler:
        for layer in self._layers:
            handler = layer.wrap(handler, method)
        return handler


class _WrappedGeneric(GenericHandler):
    """A generic handler whose methods' handlers come wrapped (a method it does not
    name stays None, so the server goes on to the next handler)."""

    def __init__(self, inner: GenericHandler, wrapper: WrappingInterceptor) -> None:
        self._inner = inner
        self._wrapper = wrapper

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._wrapper.wrapped(handler, handler_call_details.method)


class WrappingServer(grpc.Server):
    """A grpc.Server whose services' handlers are wrapped as they are added.

    The same layers as interceptors would give, without grpc's interceptor pipeline on
    every call (about six Python calls, a measurable part of a unary call's cost). The
    generated `add_*_to_server` functions add each service twice: as a generic handler
    and as registered methods (found by name); both get the same wrapped handler.
    """

    def __init__(self, server: grpc.Server, wrapper: WrappingInterceptor) -> None:
        self._server = server
        self._wrapper = wrapper

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[GenericHandler]) -> None:
        wrapper = self._wrapper
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGeneric(handler, wrapper) for handler in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, Handler]
    ) -> None:
        wrapped = {
            name: self._wrapper.wrapped(handler, f"/{service_name}/{name}")
            for name, handler in method_handlers.items()
        }
        self._server.add_registered_method_handlers(service_name, wrapped)  # type: ignore[attr-defined]

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float | None = None) -> threading.Event:
        return self._server.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)
