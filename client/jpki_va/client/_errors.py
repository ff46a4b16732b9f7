"""Errors raised by the client: one hierarchy, keyed by gRPC status code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc


class ClientError(Exception):
    """A call to the validation authority failed; ``code`` says how."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details


class InvalidArgument(ClientError):
    """The server refused the request as malformed (bad serial, unparsable DER, ...)."""


class NotFound(ClientError):
    """The server has nothing under that name."""


class PermissionDenied(ClientError):
    """The verifier's roles do not entitle it to this provision (DESIGN §7)."""


class Unauthenticated(ClientError):
    """The server did not accept the verifier's credentials."""


class Unavailable(ClientError):
    """The server could not be reached, or is not serving right now."""


class DeadlineExceeded(ClientError):
    """No answer within the call's deadline."""


class FailedPrecondition(ClientError):
    """The server is not in a state to answer (no index loaded yet, ...)."""


class ResourceExhausted(ClientError):
    """Rate limit or message size limit hit."""


class InternalError(ClientError):
    """The server failed, or answered something the protocol does not allow."""


class ProtocolError(InternalError):
    """The server's answer does not follow va.proto (unknown enum value, missing field)."""

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, details)


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def from_rpc_error(error: grpc.RpcError) -> ClientError:
    """The ClientError subclass for a gRPC failure (the base class for unmapped codes)."""
    # Errors raised by synchronous stubs are also grpc.Call objects; anything else
    # (should not happen) is reported as UNKNOWN rather than lost.
    if isinstance(error, grpc.Call):
        code = error.code()
        details = error.details() or ""
    else:
        code, details = grpc.StatusCode.UNKNOWN, str(error)
    return _BY_CODE.get(code, ClientError)(code, details)


@contextmanager
def translating_rpc_errors() -> Iterator[None]:
    """Re-raise any grpc.RpcError inside the block as the matching ClientError."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error
