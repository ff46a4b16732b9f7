"""Open streams get threads of their own, and only so many: unary calls always find one.

grpc's sync server runs every call on a thread of one pool, and a stream keeps its
thread for as long as it is open, idle or not: a few dozen idle CheckStream or
Health.Watch calls held every thread, and every unary Check behind them timed out.
grpc's `maximum_concurrent_rpcs` cannot help, as it counts unary calls too.

So every streaming method (CheckStream, GetCrl, WatchRevocations, Health.Watch,
reflection) runs on a pool of its own (grpc's per-handler `experimental_thread_pool`),
and this worker admits at most `max_streams` open streams, at most `per_caller` of
them for one caller; more are refused with RESOURCE_EXHAUSTED. A stream that moves
no message either way for `idle_seconds` is ended with UNAVAILABLE, so callers that
went quiet give their places back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from jpki_va.server.rpc.wrapping import Handler, WrappingInterceptor

log = logging.getLogger(__name__)

# Threads beyond the admitted streams: they run the refusals, which take a moment, so
# a stream past the bound is refused at once rather than queued behind open ones.
SPARE_THREADS = 2


@dataclass(frozen=True)
class StreamBudget:
    """How many streams one worker serves at once, per caller, and how long idle."""

    max_streams: int = 32
    per_caller: int = 8
    idle_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.per_caller <= self.max_streams:
            raise ValueError("per_caller must be 1 to max_streams")
        if self.idle_seconds <= 0:
            raise ValueError("idle_seconds must be positive")


class _Open:
    """One admitted stream: whose it is, and when a message last moved."""

    __slots__ = ("context", "ended", "last", "owner")

    def __init__(self, owner: str, context: grpc.ServicerContext) -> None:
        self.owner = owner
        self.context = context
        self.last = time.monotonic()
        self.ended = False  # the watchdog ended it; its thread is on its way out


class _Guarded:
    """A streaming method's behavior on the stream pool, admitted and watched.

    A class rather than a closure: grpc reads `experimental_thread_pool` off the
    behavior to choose the pool it runs on.
    """

    def __init__(
        self,
        limiter: StreamLimiter,
        inner: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
        method: str,
        request_streaming: bool,
    ) -> None:
        self.experimental_thread_pool = limiter.pool
        self._limiter = limiter
        self._inner = inner
        self._method = method
        self._request_streaming = request_streaming

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        limiter = self._limiter
        stream = limiter.admit(context, self._method)
        responses: Iterator[Any] | None = None
        try:
            if self._request_streaming:
                request = _marking(request, stream)
            responses = iter(self._inner(request, context))
            for response in responses:
                stream.last = time.monotonic()
                yield response
                stream.last = time.monotonic()  # grpc asks for more once it was sent
        finally:
            close = getattr(responses, "close", None)
            if close is not None:  # a generator left at a yield: run its cleanup now
                close()
            limiter.release(stream)


def _marking(requests: Iterator[Any], stream: _Open) -> Iterator[Any]:
    for request in requests:
        stream.last = time.monotonic()
        yield request


class StreamLimiter(WrappingInterceptor):
    """Runs streaming methods on their own pool, within a StreamBudget.

    It must be the outermost interceptor (first in `build_server`'s list): grpc
    takes the pool from the handler the outermost one returns. `owner` names whom a
    stream counts against (jpki_va.server.rpc.identity.stream_owner). `refused`
    observes each refusal as (method, status code name).
    """

    def __init__(
        self,
        budget: StreamBudget,
        owner: Callable[[grpc.ServicerContext], str],
        refused: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__()
        self.budget = budget
        self.pool = futures.ThreadPoolExecutor(
            max_workers=budget.max_streams + SPARE_THREADS, thread_name_prefix="jpki-va-stream"
        )
        self._owner = owner
        self._refused = refused
        self._lock = threading.Lock()
        self._open: set[_Open] = set()
        self._per_owner: dict[str, int] = {}
        self._stop = threading.Event()
        self._watchdog = threading.Thread(
            target=self._watch_idle, name="jpki-va-stream-idle", daemon=True
        )
        self._watchdog.start()

    def wrap(self, handler: Handler, method: str) -> Handler:
        if handler.unary_stream is not None:
            guarded = _Guarded(self, handler.unary_stream, method, request_streaming=False)
            return grpc.unary_stream_rpc_method_handler(
                guarded, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            guarded = _Guarded(self, handler.stream_stream, method, request_streaming=True)
            return grpc.stream_stream_rpc_method_handler(
                guarded, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            # None is served today; like the others it would hold a thread while open.
            raise ValueError(f"{method}: client-streaming methods are not budgeted")
        return handler

    def admit(self, context: grpc.ServicerContext, method: str) -> _Open:
        """Count a stream in, or refuse it (context.abort raises)."""
        owner = self._owner(context)
        budget = self.budget
        with self._lock:
            if len(self._open) >= budget.max_streams:
                refusal = (
                    f"this responder worker already serves {budget.max_streams} open streams; "
                    "retry later (unary calls are still served)"
                )
            elif self._per_owner.get(owner, 0) >= budget.per_caller:
                refusal = (
                    f"{owner} already has {budget.per_caller} open streams on this responder "
                    "worker; close one first"
                )
            else:
                stream = _Open(owner, context)
                self._open.add(stream)
                self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
                return stream
        if self._refused is not None:
            self._refused(method.rsplit("/", 1)[-1], grpc.StatusCode.RESOURCE_EXHAUSTED.name)
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        raise AssertionError("context.abort returned")  # it always raises

    def release(self, stream: _Open) -> None:
        with self._lock:
            if stream not in self._open:
                return
            self._open.discard(stream)
            left = self._per_owner[stream.owner] - 1
            if left:
                self._per_owner[stream.owner] = left
            else:
                del self._per_owner[stream.owner]

    def _watch_idle(self) -> None:
        idle = self.budget.idle_seconds
        while not self._stop.wait(min(1.0, idle / 4)):
            cutoff = time.monotonic() - idle
            with self._lock:
                quiet = [s for s in self._open if s.last < cutoff and not s.ended]
                for stream in quiet:
                    stream.ended = True
            for stream in quiet:
                _end(stream.context, f"stream idle for {idle:g} s (no message either way); ended")

    def close(self) -> None:
        """Stop watching; the server's stop has ended the streams themselves."""
        self._stop.set()
        self._watchdog.join(5)
        self.pool.shutdown(wait=False)


def _end(context: grpc.ServicerContext, message: str) -> None:
    """End a stream from outside its thread, which may be waiting for a request.

    `context.abort` only works in the handler's own thread. Cancelling the core call
    with a status wakes that thread and sends the caller the status with its message;
    the plain `cancel()` would say only CANCELLED.
    """
    code = grpc.StatusCode.UNAVAILABLE
    context.set_code(code)  # what the metrics interceptor reports for it
    context.set_details(message)
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        if call is not None:
            call.cancel(code.value[0], message)
        else:  # another grpc: end it without the message
            context.cancel()  # type: ignore[no-untyped-call]  # untyped in the grpc stubs
    except Exception:  # the call ended meanwhile
        log.debug("ending an idle stream", exc_info=True)
