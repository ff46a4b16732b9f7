"""Certificate lint: what the key ceremony checks before it keeps a certificate.

Every certificate a ceremony or a rotation makes is checked against its profile
(basic constraints, key usage, extended key usage, key identifiers), its issuer
(name, signature, validity inside the issuer's) and the key it certifies. A failed
lint discards the certificate before anything is written.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jpki_va.server.pki.cert_profile import CertProfile, key_id


class LintError(Exception):
    """A certificate does not match its profile, issuer or key."""


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def signature_verifies(
    cert: x509.Certificate, issuer_public_key: CertificateIssuerPublicKeyTypes
) -> bool:
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:
        return False
    try:
        if isinstance(issuer_public_key, rsa.RSAPublicKey):
            issuer_public_key.verify(
                cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm
            )
        elif isinstance(issuer_public_key, ec.EllipticCurvePublicKey):
            issuer_public_key.verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm)
            )
        else:
            return False
    except InvalidSignature:
        return False
    return True


def lint_certificate(
    cert: x509.Certificate,
    *,
    profile: CertProfile,
    subject_public_key: CertificatePublicKeyTypes,
    issuer_public_key: CertificateIssuerPublicKeyTypes,
    issuer: x509.Certificate | None,
) -> None:
    """Raise LintError listing every problem; ``issuer`` is None for a self-signed root."""
    problems = [
        *_identity(cert, subject_public_key, issuer_public_key, issuer),
        *_constraints(cert, profile),
        *_usages(cert, profile),
        *_key_ids(cert, subject_public_key, issuer_public_key),
    ]
    if problems:
        name = cert.subject.rfc4514_string()
        raise LintError(f"{profile.value} certificate {name}: " + "; ".join(problems))


def _identity(
    cert: x509.Certificate,
    subject_public_key: CertificatePublicKeyTypes,
    issuer_public_key: CertificateIssuerPublicKeyTypes,
    issuer: x509.Certificate | None,
) -> list[str]:
    problems = []
    if cert.version is not x509.Version.v3:
        problems.append("not an X.509 v3 certificate")
    if not 0 < cert.serial_number < 1 << 159:
        problems.append("serial number is not a positive integer of at most 20 octets")
    if not isinstance(cert.signature_hash_algorithm, hashes.SHA256):
        problems.append("signature hash is not SHA-256")
    if _spki(cert.public_key()) != _spki(subject_public_key):
        problems.append("certified public key is not the ceremony's key")
    if not signature_verifies(cert, issuer_public_key):
        problems.append("signature does not verify with the issuer's key")
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if nb >= na:
        problems.append("notBefore is not before notAfter")
    if issuer is None:
        if cert.issuer != cert.subject:
            problems.append("root certificate is not self-issued")
    else:
        if cert.issuer != issuer.subject:
            problems.append("issuer name differs from the issuer's subject")
        if nb < issuer.not_valid_before_utc or na > issuer.not_valid_after_utc:
            problems.append("validity is not inside the issuer's validity")
    return problems


def _constraints(cert: x509.Certificate, profile: CertProfile) -> list[str]:
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.critical:
        return ["basicConstraints missing or not critical"]
    value = bc.value
    assert isinstance(value, x509.BasicConstraints)
    problems = []
    if value.ca != profile.is_ca:
        problems.append(f"basicConstraints cA is {value.ca}, profile wants {profile.is_ca}")
    if profile is CertProfile.ISSUING_CA and value.path_length != 0:
        problems.append("issuing CA must have pathLenConstraint 0")
    return problems


def _usages(cert: x509.Certificate, profile: CertProfile) -> list[str]:
    problems = []
    ku = _ext(cert, x509.KeyUsage)
    if ku is None or not ku.critical:
        problems.append("keyUsage missing or not critical")
    else:
        usage = ku.value
        assert isinstance(usage, x509.KeyUsage)
        if profile.is_ca and not (usage.key_cert_sign and usage.crl_sign):
            problems.append("CA keyUsage lacks keyCertSign or cRLSign")
        if not profile.is_ca and (usage.key_cert_sign or usage.crl_sign):
            problems.append("end-entity keyUsage has keyCertSign or cRLSign")
        if not profile.is_ca and not usage.digital_signature:
            problems.append("signer keyUsage lacks digitalSignature")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    wanted = profile.extended_key_usage
    if wanted is None and eku is not None:
        problems.append("profile has no extendedKeyUsage but the certificate does")
    if wanted is not None:
        usages = None if eku is None else eku.value
        if not isinstance(usages, x509.ExtendedKeyUsage) or list(usages) != [wanted]:
            problems.append(f"extendedKeyUsage is not exactly {wanted.dotted_string}")
    if profile is CertProfile.OCSP_SIGNER and _ext(cert, x509.OCSPNoCheck) is None:
        problems.append("OCSP signer lacks id-pkix-ocsp-nocheck")
    return problems


def _key_ids(
    cert: x509.Certificate,
    subject_public_key: CertificatePublicKeyTypes,
    issuer_public_key: CertificateIssuerPublicKeyTypes,
) -> list[str]:
    problems = []
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    if ski is None or getattr(ski.value, "digest", None) != key_id(subject_public_key):
        problems.append("subjectKeyIdentifier missing or not the key's")
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    if aki is None or getattr(aki.value, "key_identifier", None) != key_id(issuer_public_key):
        problems.append("authorityKeyIdentifier missing or not the issuer key's")
    return problems
