"""Verifier client of jpki-va: status checks, OCSP, mappings, signing records, the
revocation feed, CRL files, and the verifier commands (`jpki-va-client`: `check`,
`map`, `record`, `watch`, `crl`, `token verify`).

Typical use: ``with VaClient(target, credentials=creds) as va: va.check(kind=..., serial=...)``;
``va.check_many([(kind, serial), certificate, ...])`` over one stream;
``va.map(...)``, ``va.signing_record(...)``, ``for update in va.watch(since=n, resume=True)``.
A verifier token is checked offline with ``verify_verifier_token(token, root)``.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        AuthorityRevocationList,
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

# Loaded on first use (PEP 562), so that `jpki-va-client` (jpki_va.client._main) can
# quiet gRPC's C core before anything imports grpc; `from jpki_va.client import
# VaClient` works as before.
_WHERE: dict[str, tuple[str, str]] = {
    "add_commands": ("jpki_va.client._cli", "add_commands"),
    "run_check": ("jpki_va.client._cli", "run_check"),
    "VaClient": ("jpki_va.client._client", "VaClient"),
    "ClientError": ("jpki_va.client._errors", "ClientError"),
    "DeadlineExceeded": ("jpki_va.client._errors", "DeadlineExceeded"),
    "FailedPrecondition": ("jpki_va.client._errors", "FailedPrecondition"),
    "InternalError": ("jpki_va.client._errors", "InternalError"),
    "InvalidArgument": ("jpki_va.client._errors", "InvalidArgument"),
    "NotFound": ("jpki_va.client._errors", "NotFound"),
    "PermissionDenied": ("jpki_va.client._errors", "PermissionDenied"),
    "ProtocolError": ("jpki_va.client._errors", "ProtocolError"),
    "ResourceExhausted": ("jpki_va.client._errors", "ResourceExhausted"),
    "Unauthenticated": ("jpki_va.client._errors", "Unauthenticated"),
    "Unavailable": ("jpki_va.client._errors", "Unavailable"),
    "AuthorityRevocationList": ("jpki_va.client._models", "AuthorityRevocationList"),
    "CertIdRef": ("jpki_va.client._models", "CertIdRef"),
    "CertificateStatus": ("jpki_va.client._models", "CertificateStatus"),
    "CheckErrorCode": ("jpki_va.client._models", "CheckErrorCode"),
    "CheckRefusal": ("jpki_va.client._models", "CheckRefusal"),
    "CrlMeta": ("jpki_va.client._models", "CrlMeta"),
    "IssuerCompromise": ("jpki_va.client._models", "IssuerCompromise"),
    "IssuerInfo": ("jpki_va.client._models", "IssuerInfo"),
    "IssuerSet": ("jpki_va.client._models", "IssuerSet"),
    "MappedCertificate": ("jpki_va.client._models", "MappedCertificate"),
    "OcspResult": ("jpki_va.client._models", "OcspResult"),
    "Revocation": ("jpki_va.client._models", "Revocation"),
    "RevocationEvent": ("jpki_va.client._models", "RevocationEvent"),
    "RevocationUpdate": ("jpki_va.client._models", "RevocationUpdate"),
    "SigningRecord": ("jpki_va.client._models", "SigningRecord"),
    "CertKind": ("jpki_va.core.domain", "CertKind"),
    "CrlReason": ("jpki_va.core.domain", "CrlReason"),
    "LinkType": ("jpki_va.core.domain", "LinkType"),
    "LossCause": ("jpki_va.core.domain", "LossCause"),
    "Role": ("jpki_va.core.domain", "Role"),
    "Status": ("jpki_va.core.domain", "Status"),
    "VERIFIER_HEADER": ("jpki_va.core.loopback", "VERIFIER_HEADER"),
    "is_loopback_target": ("jpki_va.core.loopback", "is_loopback_target"),
    "InvalidVerifierToken": ("jpki_va.core.verifier_token", "InvalidVerifierToken"),
    "VerifierToken": ("jpki_va.core.verifier_token", "VerifierToken"),
    "verify_verifier_token": ("jpki_va.core.verifier_token", "verify_token"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = [
    "VERIFIER_HEADER",
    "AuthorityRevocationList",
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
