"""Detached CMS (PKCS#7) signatures: how a published document is signed.

The report of 第41条 is published (公表) as files anyone can check against the root
with nothing of ours: `openssl cms -verify -binary -inform DER -in F.p7s -content F
-CAfile root.pem -purpose any`. The signer's certificate travels in the signature.
cryptography's builder calls the key's own `sign()`, so an HSM key signs here.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7


def detached_signature(
    key: CertificateIssuerPrivateKeyTypes, certificate: x509.Certificate, content: bytes
) -> bytes:
    """A DER CMS SignedData over `content` (not included), with the signer's certificate."""
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError(f"{type(key).__name__} cannot sign CMS")
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(certificate, key, hashes.SHA256())
        .sign(Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])
    )
