"""Verifier client of jpki-va: status checks, OCSP, mappings, signing records, the
revocation feed, CRL files, and the verifier commands (`jpki-va-client`: `check`,
`map`, `record`, `watch`, `crl`, `token verify`).

Typical use: ``with VaClient(target, credentials=creds) as va: va.check(kind=..., serial=...)``;
``va.check_many([(kind, serial), certificate, ...])`` over one stream;
``va.map(...)``, ``va.signing_record(...)``, ``for update in va.watch(since=n, resume=True)``.
A verifier token is checked offline with ``verify_verifier_token(token, root)``.
"""

from jpki_va.client._cli import add_commands, run_check
from jpki_va.client._client import VaClient
from jpki_va.client._errors import (
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
from jpki_va.client._models import (
    CertIdRef,
    CertificateStatus,
    CheckErrorCode,
    CheckRefusal,
    CrlMeta,
    IssuerCompromise,
    IssuerInfo,
    IssuerSet,
    MappedCertificate,
    OcspResult,
    Revocation,
    RevocationEvent,
    RevocationUpdate,
    SigningRecord,
)
from jpki_va.core.domain import CertKind, CrlReason, LinkType, LossCause, Role, Status
from jpki_va.core.loopback import VERIFIER_HEADER, is_loopback_target
from jpki_va.core.verifier_token import InvalidVerifierToken, VerifierToken
from jpki_va.core.verifier_token import verify_token as verify_verifier_token

__all__ = [
    "VERIFIER_HEADER",
    "CertIdRef",
    "CertKind",
    "CertificateStatus",
    "CheckErrorCode",
    "CheckRefusal",
    "ClientError",
    "CrlMeta",
    "CrlReason",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InternalError",
    "InvalidArgument",
    "InvalidVerifierToken",
    "IssuerCompromise",
    "IssuerInfo",
    "IssuerSet",
    "LinkType",
    "LossCause",
    "MappedCertificate",
    "NotFound",
    "OcspResult",
    "PermissionDenied",
    "ProtocolError",
    "ResourceExhausted",
    "Revocation",
    "RevocationEvent",
    "RevocationUpdate",
    "Role",
    "SigningRecord",
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
