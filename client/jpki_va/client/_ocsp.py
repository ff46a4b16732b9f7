"""RFC 6960 pieces the client builds itself: CertID hashes and OCSP requests."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp

# SHA-1 CertIDs are what `openssl ocsp` and most deployed clients send, so the
# responder must match them; the hash only names the issuer, it is not a signature.
DEFAULT_HASH = "sha1"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
}


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """The cryptography hash for a CertID hash name ("sha1" or "sha256", as in va.proto)."""
    try:
        return _HASHES[name.lower()]()
    except KeyError:
        raise ValueError(f"unsupported CertID hash {name!r} (expected sha1 or sha256)") from None


def public_key_bits(issuer: x509.Certificate) -> bytes:
    """The contents of the issuer's subjectPublicKey BIT STRING (what RFC 6960 hashes)."""
    key = issuer.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise TypeError(f"unsupported issuer key type {type(key).__name__}")


def issuer_hashes(issuer: x509.Certificate, algorithm: str = DEFAULT_HASH) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of a CertID for certificates `issuer` signed."""
    name_hash = hashes.Hash(hash_algorithm(algorithm))
    name_hash.update(issuer.subject.public_bytes())
    key_hash = hashes.Hash(hash_algorithm(algorithm))
    key_hash.update(public_key_bits(issuer))
    return name_hash.finalize(), key_hash.finalize()


def build_request(
    *,
    issuer: x509.Certificate,
    certificate: x509.Certificate | None = None,
    serial: int | None = None,
    algorithm: str = DEFAULT_HASH,
) -> bytes:
    """DER OCSPRequest for one certificate, given itself or only its serial."""
    builder = ocsp.OCSPRequestBuilder()
    if certificate is not None:
        builder = builder.add_certificate(certificate, issuer, hash_algorithm(algorithm))
    elif serial is not None:
        name_hash, key_hash = issuer_hashes(issuer, algorithm)
        builder = builder.add_certificate_by_hash(
            name_hash, key_hash, serial, hash_algorithm(algorithm)
        )
    else:
        raise ValueError("an OCSP request needs the certificate or its serial")
    return builder.build().public_bytes(serialization.Encoding.DER)


def parse_certificate(data: bytes) -> x509.Certificate:
    """A certificate from PEM or DER bytes (ValueError when it is neither)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)
