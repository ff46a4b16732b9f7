"""The public announcement (公表) as a CMS SignedData (RFC 5652) anyone can check.

The content is the announcement's JSON, carried inside the signature (not detached),
signed with the snapshot key, whose certificate the root issued and which travels
in the signature: `openssl cms -verify -inform DER -in announcement.p7m -CAfile
root.pem -purpose any` prints the JSON when, and only when, the root vouches for it.
(`-purpose any`: the snapshot key's certificate is for signing J-LIS's own data,
not S/MIME mail, which openssl otherwise expects.)
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7


def sign_announcement(
    content: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
) -> bytes:
    """DER SignedData over `content`, with the signer's certificate included."""
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(certificate, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
