"""Verifier client of jpki-va: typed status checks, OCSP and the `check` command.

Typical use: ``with VaClient(target, credentials=creds) as va: va.check(kind=..., serial=...)``.
A verifier token is checked offline with ``verify_verifier_token(token, root)``.
"""

from client._cli import add_commands, run_check
from client._client import VERIFIER_HEADER, VaClient, is_loopback_target
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
from server.domain import CertKind, CrlReason, LossCause, Role, Status
from server.verifier_token import InvalidVerifierToken, VerifierToken
from server.verifier_token import verify_token as verify_verifier_token

__all__ = [
    "VERIFIER_HEADER",
    "CertIdRef",
    "CertKind",
    "CertificateStatus",
    "ClientError",
    "CrlReason",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InternalError",
    "InvalidArgument",
    "InvalidVerifierToken",
    "IssuerInfo",
    "IssuerSet",
    "LossCause",
    "NotFound",
    "OcspResult",
    "PermissionDenied",
    "ProtocolError",
    "ResourceExhausted",
    "Revocation",
    "Role",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "VaClient",
    "VerifierToken",
    "add_commands",
    "is_loopback_target",
    "run_check",
    "verify_verifier_token",
]
