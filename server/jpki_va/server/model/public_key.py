"""A holder key's identity: the SHA-256 of its DER SubjectPublicKeyInfo.

The registry indexes every certified key by this hash, and the signer asks it before
certifying a key; both go through here so they hash the same bytes. The key is
re-encoded rather than hashed as received, so two encodings of one key (an EC point
compressed or not) are one key.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_HASH_SIZE = 32


def public_key_hash(key: PublicKeyTypes) -> bytes:
    """SHA-256 of the key's DER SubjectPublicKeyInfo."""
    return hashlib.sha256(
        key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).digest()


def certificate_key_hash(certificate_der: bytes) -> bytes | None:
    """`public_key_hash` of the key a DER certificate certifies; None without a body.

    Records written in bulk (the bench's) carry no certificate body, so no key either.
    """
    if not certificate_der:
        return None
    return public_key_hash(x509.load_der_x509_certificate(certificate_der).public_key())
