"""Verifier client of jpki-va: typed status checks, OCSP and the `check` command.

Typical use: ``with VaClient(target, credentials=creds) as va: va.check(kind=..., serial=...)``.
"""

from client._cli import add_commands, run_check
from client._client import VaClient, is_loopback_target
from client._errors import (
    ClientError,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from client._models import (
    CertIdRef,
    CertificateStatus,
    IssuerInfo,
    IssuerSet,
    OcspResult,
    Revocation,
)
from server.domain import CertKind, CrlReason, LossCause, Status

__all__ = [
    "CertIdRef",
    "CertKind",
    "CertificateStatus",
    "ClientError",
    "CrlReason",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InternalError",
    "InvalidArgument",
    "IssuerInfo",
    "IssuerSet",
    "LossCause",
    "NotFound",
    "OcspResult",
    "PermissionDenied",
    "ProtocolError",
    "ResourceExhausted",
    "Revocation",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "VaClient",
    "add_commands",
    "is_loopback_target",
    "run_check",
]
