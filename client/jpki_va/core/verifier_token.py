"""The verifier token (特定利用者証明検証者証明符号, 第38条の3): format, signing, checking.

A compact JWS (RFC 7515) that anyone holding the root certificate can check offline:

    header  {"alg": "ES256" | "RS256", "typ": "jpki-va-verifier-token", "x5c": [cert]}
    payload {"iss": "jpki-va", "sub": verifier id, "roles": [...], "agreement": ref,
             "iat", "nbf", "exp": seconds since the epoch, "jti": random id,
             "cnf": {"x5t#S256": fingerprint of the verifier's mTLS certificate}}

The x5c certificate is the HSM verifier-token key's, issued by the root with the
EKU OID_VERIFIER_TOKEN_SIGNING; `cnf` (RFC 8705) binds the token to the client
certificate the verifier asked with, when it asked over mTLS.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.domain import Role, Verifier
from jpki_va.core.oids import OID_VERIFIER_TOKEN_SIGNING

TYPE = "jpki-va-verifier-token"
ISSUER = "jpki-va"
_P256_HALF = 32


class InvalidVerifierToken(ValueError):
    """The token is malformed, not signed by the agency's token key, or not valid now."""


@dataclass(frozen=True, slots=True)
class VerifierToken:
    """A checked token: what the agency certified about the verifier."""

    verifier_id: str
    roles: frozenset[Role]
    agreement: str
    issued_at: datetime
    not_before: datetime
    not_after: datetime
    token_id: str
    cert_fingerprint: bytes | None  # the mTLS certificate it is bound to, if any
    signer: x509.Certificate


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidVerifierToken("token part is not base64url") from None


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def issue_token(
    key: CertificateIssuerPrivateKeyTypes,
    cert: x509.Certificate,
    verifier: Verifier,
    *,
    now: datetime,
    validity: timedelta,
    cert_fingerprint: bytes | None,
) -> tuple[str, datetime]:
    """Sign a token for `verifier`, valid from now for `validity` (at most the key's cert).

    Returns the token and the end of its validity.
    """
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = "ES256"
    elif isinstance(key, rsa.RSAPrivateKey):
        alg = "RS256"
    else:
        raise TypeError(f"unsupported verifier-token key {type(key).__name__}")
    # Whole seconds, as the token carries them.
    not_after = min(now + validity, cert.not_valid_after_utc).replace(microsecond=0)
    header = {
        "alg": alg,
        "typ": TYPE,
        "x5c": [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()],
    }
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "sub": verifier.id,
        "roles": sorted(r.name for r in verifier.roles),
        "agreement": verifier.agreement,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int(not_after.timestamp()),
        "jti": secrets.token_hex(16),
    }
    if cert_fingerprint is not None:
        payload["cnf"] = {"x5t#S256": _b64(cert_fingerprint)}
    signing_input = f"{_b64(_json(header))}.{_b64(_json(payload))}".encode()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(_P256_HALF, "big") + s.to_bytes(_P256_HALF, "big")
    else:
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64(signature)}", not_after


def verify_token(
    token: str, root: x509.Certificate, *, now: datetime | None = None
) -> VerifierToken:
    """Check a token offline against the root certificate; InvalidVerifierToken if bad."""
    now = now or datetime.now(UTC)
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise InvalidVerifierToken("a token has three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        payload = json.loads(_unb64(parts[1]))
    except ValueError:
        raise InvalidVerifierToken("token header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise InvalidVerifierToken("token header and payload must be JSON objects")
    if header.get("typ") != TYPE:
        raise InvalidVerifierToken(f"not a verifier token (typ {header.get('typ')!r})")
    signer = _signer_certificate(header, root, now)
    _check_signature(header.get("alg"), signer, f"{parts[0]}.{parts[1]}".encode(), _unb64(parts[2]))
    try:
        issued_at, not_before, not_after = (
            datetime.fromtimestamp(int(payload[k]), UTC) for k in ("iat", "nbf", "exp")
        )
        roles = frozenset(Role[str(r)] for r in payload["roles"])
        verifier_id, agreement, token_id = str(payload["sub"]), payload["agreement"], payload["jti"]
        bound = payload.get("cnf", {}).get("x5t#S256")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidVerifierToken(f"token payload is incomplete: {exc!r}") from None
    if payload.get("iss") != ISSUER:
        raise InvalidVerifierToken(f"token issuer {payload.get('iss')!r} is not {ISSUER!r}")
    if not not_before <= now < not_after:
        raise InvalidVerifierToken(
            f"token is valid from {not_before.isoformat()} to {not_after.isoformat()}, "
            f"not at {now.isoformat()}"
        )
    if Role.SPECIFIC_AUTH_VERIFIER not in roles or not agreement:
        raise InvalidVerifierToken("token does not certify a specific auth verifier")
    return VerifierToken(
        verifier_id=verifier_id,
        roles=roles,
        agreement=str(agreement),
        issued_at=issued_at,
        not_before=not_before,
        not_after=not_after,
        token_id=str(token_id),
        cert_fingerprint=None if bound is None else _unb64(str(bound)),
        signer=signer,
    )


def _signer_certificate(
    header: dict[str, Any], root: x509.Certificate, now: datetime
) -> x509.Certificate:
    try:
        der = base64.b64decode(header["x5c"][0], validate=True)
        cert = x509.load_der_x509_certificate(der)
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
        raise InvalidVerifierToken("token header has no readable x5c certificate") from None
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise InvalidVerifierToken("token signer is not issued by the root") from None
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise InvalidVerifierToken("token signer certificate has no EKU") from None
    if OID_VERIFIER_TOKEN_SIGNING not in eku:
        raise InvalidVerifierToken("token signer certificate is not for verifier tokens")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise InvalidVerifierToken("token signer certificate is not valid now")
    return cert


def _check_signature(alg: object, cert: x509.Certificate, data: bytes, signature: bytes) -> None:
    public = cert.public_key()
    try:
        if alg == "ES256" and isinstance(public, ec.EllipticCurvePublicKey):
            if len(signature) != 2 * _P256_HALF:
                raise InvalidSignature
            der = encode_dss_signature(
                int.from_bytes(signature[:_P256_HALF], "big"),
                int.from_bytes(signature[_P256_HALF:], "big"),
            )
            public.verify(der, data, ec.ECDSA(hashes.SHA256()))
        elif alg == "RS256" and isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise InvalidVerifierToken(f"algorithm {alg!r} does not match the signer's key")
    except InvalidSignature:
        raise InvalidVerifierToken("token signature does not verify") from None
