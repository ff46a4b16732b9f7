"""Request bytes that are no message of the method's type: INVALID_ARGUMENT, logged bounded.

grpc runs a handler's request deserializer itself, and when it raises, grpc logs the
exception with its traceback (an ERROR per message: anyone can fill the log) and
answers INTERNAL, as if the fault were ours. So the deserializer this interceptor
gives every method never raises: it returns an `Undecodable` in place of the
message, and the handler answers it with INVALID_ARGUMENT before the servicer sees
it (in a stream, when the servicer reaches it). One interceptor covers every
service on the server, health and reflection included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from jpki_va.server.base.refusal_log import RefusalLog
from jpki_va.server.rpc.wrapping import Handler, WrappingInterceptor

REASON = "undecodable gRPC request"


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands for a request message that did not parse."""

    error: str  # the parser's exception class: what went wrong, not the bytes


def _decoder(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # whatever the parser raises for bytes it cannot read
            return Undecodable(type(exc).__name__)

    # A reader bound to an object with `or_else` (batch_wire's for unary Check) reads
    # its usual request without raising, and hands the rest to `decode`: the usual
    # request then costs no frame of ours around the read.
    or_else = getattr(getattr(deserializer, "__self__", None), "or_else", None)
    return decode if or_else is None else or_else(decode)


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    """`pkg.Message` for a generated `Message.FromString` (or a reader bound to an
    object with the message's `DESCRIPTOR`, as `batch_wire.batch_request`), else a
    plain word."""
    message = getattr(deserializer, "__self__", None)
    descriptor = getattr(message, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


class RequestDecodingInterceptor(WrappingInterceptor):
    """Innermost: its deserializer is the one grpc uses, whatever wraps it."""

    def __init__(self, refusals: RefusalLog) -> None:
        super().__init__()
        self._refusals = refusals

    def wrap(self, handler: Handler, method: str) -> Handler:
        deserializer = handler.request_deserializer
        if deserializer is None:
            return handler
        decode = _decoder(deserializer)
        message = f"the request is not a valid {_type_name(deserializer)} message"
        refusals = self._refusals

        def refuse(request: Undecodable, context: grpc.ServicerContext) -> NoReturn:
            refusals.refused(REASON, f"{method} ({request.error})")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            raise AssertionError("context.abort returned")  # it raises; for the checker

        def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            for request in requests:
                if isinstance(request, Undecodable):
                    refuse(request, context)
                yield request

        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            uu = handler.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, Undecodable):
                    refuse(request, context)
                return uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, decode, serialize)
        if handler.unary_stream is not None:
            us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, Undecodable):
                    refuse(request, context)
                return us(request, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream, decode, serialize)
        if handler.stream_unary is not None:
            su = handler.stream_unary

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return su(checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, decode, serialize)
        ss = handler.stream_stream
        assert ss is not None

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return ss(checked(requests, context), context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, decode, serialize)
