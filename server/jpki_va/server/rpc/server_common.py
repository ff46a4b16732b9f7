"""What every jpki-va gRPC server shares: error mapping, health, reflection.

Domain code raises its own exceptions and never imports grpc; the interceptor here
turns them into gRPC statuses with a message, and turns anything unexpected into
INTERNAL without a stack trace for the client (what failed and where goes to the
log, bounded and rate-limited).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc import _server as _grpc_server  # internal: see GRPC_CONTEXT
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jpki_va.server.base.refusal_log import RefusalLog, bounded
from jpki_va.server.rpc.reflection import enable_reflection
from jpki_va.server.rpc.request_decoding import RequestDecodingInterceptor
from jpki_va.server.rpc.wrapping import Folded, Handler, WrappingInterceptor, WrappingServer

log = logging.getLogger(__name__)

#: Exception class -> status, and optionally a cause for the CAUSE trailer.
ErrorMap = Sequence[
    tuple[type[BaseException], grpc.StatusCode] | tuple[type[BaseException], grpc.StatusCode, str]
]

#: Trailing metadata naming why a call failed where the status alone cannot tell:
#: UNAVAILABLE from a signer that answered but whose HSM did not is
#: CAUSE: HSM_UNAVAILABLE, unlike the UNAVAILABLE of a signer that cannot be reached.
CAUSE = "x-jpki-va-cause"
HSM_UNAVAILABLE = "hsm-unavailable"
STORE_UNAVAILABLE = "store-unavailable"  # the signer's snapshot store, for a publish


def _status_for(exc: BaseException, mapping: ErrorMap) -> tuple[grpc.StatusCode, str | None] | None:
    for cls, code, *cause in mapping:
        if isinstance(exc, cls):
            return code, (cause[0] if cause else None)
    return None


def _aborted(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """True when the servicer already set a status (context.abort raised)."""
    # ServicerContext.code() exists at run time (grpcio >= 1.38); the stubs lack it.
    return isinstance(exc, grpc.RpcError) or context.code() is not None  # type: ignore[attr-defined]


# Trailing metadata naming the worker process that answered: with N workers on one
# port, operators (and tests) can tell which one served a call.
SERVED_BY = "x-jpki-va-worker"

#: grpc's own servicer context (grpcio as pinned; None in another whose module has no
#: such class). Its `set_trailing_metadata` stores one attribute of the call's state
#: under the call's lock: three Python calls (the method and the lock's `__enter__`
#: and `__exit__`, Python in `threading.Condition`) on every unary call for the worker
#: trailer. `_set_trailer` stores it itself.
GRPC_CONTEXT: type | None = getattr(_grpc_server, "_Context", None)


def _set_trailer(context: grpc.ServicerContext, trailer: tuple[tuple[str, str], ...]) -> None:
    """`context.set_trailing_metadata(trailer)`, on grpc's context without its lock.

    The lock orders the store with readers of the state on other threads, which read
    the old tuple or the new one either way: a reference store is atomic under the GIL."""
    if type(context) is GRPC_CONTEXT:
        context._state.trailing_metadata = trailer  # type: ignore[attr-defined]
    else:
        context.set_trailing_metadata(trailer)


#: Innermost frames of a server fault that its log line names.
FAULT_FRAMES = 4
#: Characters of a fault's log line (its message, then where it was raised).
FAULT_LIMIT = 600


def fault_detail(exc: BaseException) -> str:
    """`Type: message (at file:line in function ← its callers)`, bounded: one log line
    that says what failed and where, without a traceback per call."""
    frames = traceback.extract_tb(exc.__traceback__)[-FAULT_FRAMES:]
    where = " ← ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__}: {bounded(str(exc), 200)} (at {where})"


class ErrorMappingInterceptor(WrappingInterceptor):
    """Domain exceptions to the statuses `mapping` names; anything else is the server's
    own fault: INTERNAL for the caller, and one bounded ERROR line per method and
    exception type a window (through `faults`), the rest counted."""

    def __init__(
        self, mapping: ErrorMap, served_by: str | None = None, faults: RefusalLog | None = None
    ) -> None:
        super().__init__()
        self._mapping = mapping
        self._trailer = () if served_by is None else ((SERVED_BY, served_by),)
        self._faults = faults or RefusalLog(log)

    def _abort(self, exc: BaseException, context: grpc.ServicerContext, method: str) -> None:
        found = _status_for(exc, self._mapping)
        if found is None:
            self._faults.refused(
                f"internal error in {method} ({type(exc).__name__})",
                fault_detail(exc),
                level=logging.ERROR,
                limit=FAULT_LIMIT,
            )
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        code, cause = found
        if cause is not None:
            context.set_trailing_metadata((*self._trailer, (CAUSE, cause)))
        context.abort(code, str(exc) or type(exc).__name__)

    def wrap(self, handler: Handler, method: str) -> Handler:
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            trailer = self._trailer

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                if trailer:
                    _set_trailer(context, trailer)
                try:
                    return inner_uu(request, context)
                except Exception as exc:
                    if _aborted(exc, context):
                        raise
                    self._abort(exc, context, method)
                    raise

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None or handler.stream_stream is not None:
            inner = handler.unary_stream or handler.stream_stream
            assert inner is not None

            def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                if self._trailer:
                    _set_trailer(context, self._trailer)
                try:
                    yield from inner(request, context)
                except Exception as exc:
                    if _aborted(exc, context):
                        raise
                    self._abort(exc, context, method)
                    raise

            make = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream is not None
                else grpc.stream_stream_rpc_method_handler
            )
            return make(streaming, handler.request_deserializer, handler.response_serializer)
        return handler


def build_server(
    *,
    max_workers: int,
    mapping: ErrorMap,
    options: Iterable[tuple[str, Any]] = (),
    served_by: str | None = None,
    maximum_concurrent_rpcs: int | None = None,
    interceptors: Sequence[WrappingInterceptor] = (),
    refusals: RefusalLog | None = None,
) -> grpc.Server:
    """A server; past ``maximum_concurrent_rpcs`` gRPC answers RESOURCE_EXHAUSTED itself.

    `interceptors` (outermost first) see the final status the error mapping set.
    Undecodable requests are INVALID_ARGUMENT, logged through `refusals`, and so are
    the server's own faults (INTERNAL), at ERROR.
    """
    refusals = refusals or RefusalLog(log)
    decoding = RequestDecodingInterceptor(refusals)
    errors = ErrorMappingInterceptor(mapping, served_by, refusals)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=list(options),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    return WrappingServer(server, Folded([*interceptors, errors, decoding]))


def add_health_and_reflection(
    server: grpc.Server, service_names: Sequence[str]
) -> health.HealthServicer:
    """Standard grpc.health.v1 (starting NOT_SERVING) and server reflection (v1 and
    v1alpha)."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", *service_names):
        servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    enable_reflection((*service_names, health.SERVICE_NAME), server)
    return servicer


def set_serving(servicer: health.HealthServicer, names: Sequence[str], serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", *names):
        servicer.set(name, status)


def set_part_serving(servicer: health.HealthServicer, name: str, serving: bool) -> None:
    """One part's health (a name of its own, such as "jpki-va.publish"), leaving the
    server's overall status as it is: a part that fails need not take the server out."""
    servicer.set(
        name,
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING,
    )


class CannotListen(OSError):
    """The address cannot be bound: in use by another process, or not this host's."""


def bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind and return the port; refuses plaintext anywhere but loopback."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if credentials is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"plaintext is allowed only on loopback, not on {host}")
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc's "Failed to bind", with a hint about debug logs
        raise CannotListen(
            f"cannot listen on {address}: the address is in use or not this host's"
        ) from exc
    if port == 0:
        raise CannotListen(f"cannot listen on {address}")
    return int(port)


def release(server: grpc.Server) -> None:
    """Free the ports of a server bound but never started (a start that failed later).

    grpc closes its listeners only when a started server stops: dropping or stopping
    an unstarted one leaves the port held for the life of the process.
    """
    server.start()
    server.stop(None).wait()
