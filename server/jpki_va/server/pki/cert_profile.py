"""Certificate and CRL profiles: what every certificate and CRL we sign contains.

Pure functions over cryptography's builders; the private key passed in may be an
HSM key (hsm.HsmPrivateKey), so signing here may go to the token.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jpki_va.core.domain import CertKind
from jpki_va.core.oids import (
    OID_HOLDER_ADDRESS,
    OID_HOLDER_BIRTH_DATE,
    OID_HOLDER_NAME,
    OID_HOLDER_SEX,
    OID_SNAPSHOT_SIGNING,
    OID_VERIFIER_TOKEN_SIGNING,
    policy_oid,
)
from jpki_va.server.model.holder import Holder

ORGANIZATION = "JPKI-VA"

DEFAULT_VALIDITY = {
    CertKind.CARD_SIGN: timedelta(days=5 * 365),
    CertKind.CARD_AUTH: timedelta(days=5 * 365),
    CertKind.MOBILE_SIGN: timedelta(days=5 * 365),
    CertKind.MOBILE_AUTH: timedelta(days=5 * 365),
}


class CertProfile(enum.Enum):
    """The certificate profiles the authority signs; the names a ceremony config uses."""

    ROOT_CA = "root-ca"
    ISSUING_CA = "issuing-ca"
    SNAPSHOT_SIGNER = "snapshot-signer"
    VERIFIER_TOKEN_SIGNER = "verifier-token-signer"  # noqa: S105 (a name, not a secret)
    OCSP_SIGNER = "ocsp-signer"

    @property
    def is_ca(self) -> bool:
        return self in (CertProfile.ROOT_CA, CertProfile.ISSUING_CA)

    @property
    def extended_key_usage(self) -> x509.ObjectIdentifier | None:
        return _PROFILE_EKU.get(self)


_PROFILE_EKU = {
    CertProfile.SNAPSHOT_SIGNER: OID_SNAPSHOT_SIGNING,
    CertProfile.VERIFIER_TOKEN_SIGNER: OID_VERIFIER_TOKEN_SIGNING,
    CertProfile.OCSP_SIGNER: ExtendedKeyUsageOID.OCSP_SIGNING,
}


@dataclass(frozen=True)
class ProfileSettings:
    """Where the world finds our OCSP responder and CRLs, and how long things last."""

    base_url: str = "http://127.0.0.1:8080"
    validity: dict[CertKind, timedelta] = field(default_factory=lambda: dict(DEFAULT_VALIDITY))
    crl_validity: timedelta = timedelta(hours=48)
    ocsp_signer_validity: timedelta = timedelta(days=7)
    backdate: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if self.base_url.endswith("/"):
            object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.crl_validity <= timedelta(0) or self.ocsp_signer_validity <= timedelta(0):
            raise ValueError("CRL and OCSP-signer validity must be positive")

    @property
    def ocsp_url(self) -> str:
        return f"{self.base_url}/ocsp"

    def crl_url(self, kind: CertKind, issuer_key_id: bytes, partition: str) -> str:
        return f"{self.base_url}/crl/{kind.slug}/{issuer_key_id.hex()[:16]}/{partition}.crl"

    def delta_crl_url(self, kind: CertKind, issuer_key_id: bytes, partition: str) -> str:
        """Where the partition's current delta CRL is (the certificates' freshestCRL)."""
        return f"{self.base_url}/crl/{kind.slug}/{issuer_key_id.hex()[:16]}/{partition}.delta.crl"

    def arl_url(self, root_key_id: bytes) -> str:
        """Where the root's authority revocation list is (the issuing CAs' CRLDP)."""
        return f"{self.base_url}/arl/{root_key_id.hex()[:16]}.crl"

    def ca_certificate_url(self, kind: CertKind | None, key_id: bytes) -> str:
        """Where a CA certificate is, DER (AIA caIssuers): the root's for kind None."""
        folder = "root" if kind is None else kind.slug
        return f"{self.base_url}/ca/{folder}/{key_id.hex()[:16]}.crt"


def key_id(public_key: CertificatePublicKeyTypes) -> bytes:
    """RFC 5280 method 1 key identifier; issuer generations are told apart by it."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def root_name() -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "JPKI-VA Root CA"),
        ]
    )


def issuer_name(kind: CertKind) -> x509.Name:
    """The issuing CA's name: the same for every generation of that kind."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind.slug),
            x509.NameAttribute(NameOID.COMMON_NAME, f"JPKI-VA {kind.name} CA"),
        ]
    )


def signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return hashes.SHA256()
    raise TypeError(f"unsupported issuer key type {type(key).__name__}")


def key_usage(
    *,
    digital_signature: bool = False,
    content_commitment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """The key usages our profiles set; every other bit stays clear."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_extensions(
    builder: x509.CertificateBuilder,
    public_key: CertificateIssuerPublicKeyTypes,
    issuer_key_id: bytes,
    path_length: int | None,
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
        .add_extension(key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier(issuer_key_id, None, None),
            False,
        )
    )


def root_certificate(
    key: CertificateIssuerPrivateKeyTypes,
    not_before: datetime,
    not_after: datetime,
    subject: x509.Name | None = None,
    *,
    settings: ProfileSettings | None = None,
) -> x509.Certificate:
    """The self-signed root. With `settings`, it names its own ARL as its CRLDP, as
    the issuing CAs do: a validator that checks every certificate of the path, the
    trust anchor included (OpenSSL's -crl_check_all), finds the root in the ARL's
    scope too."""
    public_key = key.public_key()
    name = subject or root_name()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if settings is not None:
        builder = builder.add_extension(_arl_point(settings, key_id(public_key)), False)
    builder = _ca_extensions(builder, public_key, key_id(public_key), None)
    return builder.sign(key, signature_hash(key))


def _ca_issuers(url: str) -> x509.AccessDescription:
    return x509.AccessDescription(
        x509.oid.AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(url)
    )


def _arl_point(settings: ProfileSettings, root_key_id: bytes) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(settings.arl_url(root_key_id))],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def root_links(settings: ProfileSettings, root_key_id: bytes) -> list[x509.ExtensionType]:
    """What an issuing CA certificate says about its issuer: where the root's ARL
    (CRL distribution point) and the root certificate (AIA caIssuers) are. A validator
    that wants revocation information for every certificate of a path needs both."""
    return [
        _arl_point(settings, root_key_id),
        x509.AuthorityInformationAccess(
            [_ca_issuers(settings.ca_certificate_url(None, root_key_id))]
        ),
    ]


def links_of(cert: x509.Certificate) -> list[x509.ExtensionType]:
    """The root links an issuing CA certificate carries, for its next generation."""
    kinds = (x509.CRLDistributionPoints, x509.AuthorityInformationAccess)
    return [e.value for e in cert.extensions if isinstance(e.value, kinds)]


def issuing_ca_certificate(
    root_key: CertificateIssuerPrivateKeyTypes,
    root_cert: x509.Certificate,
    kind: CertKind,
    public_key: CertificateIssuerPublicKeyTypes,
    not_before: datetime,
    not_after: datetime,
    subject: x509.Name | None = None,
    *,
    links: Sequence[x509.ExtensionType],
) -> x509.Certificate:
    """An issuing CA of `kind`; every generation of a kind carries the same subject.

    `links`: `root_links(...)` at a ceremony, the previous generation's at a rotation.
    """
    not_after = min(not_after, root_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or issuer_name(kind))
        .issuer_name(root_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(policy_oid(kind.value), None)]),
            False,
        )
    )
    for link in links:
        builder = builder.add_extension(link, False)
    builder = _ca_extensions(builder, public_key, key_id(root_key.public_key()), 0)
    return builder.sign(root_key, signature_hash(root_key))


def _signer_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def snapshot_signer_name() -> x509.Name:
    return _signer_name("JPKI-VA Snapshot Signer")


def verifier_token_signer_name() -> x509.Name:
    return _signer_name("JPKI-VA Verifier Token Signer")


def _root_signed_signer(
    root_key: CertificateIssuerPrivateKeyTypes,
    root_cert: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    not_before: datetime,
    not_after: datetime,
    eku: x509.ObjectIdentifier,
) -> x509.Certificate:
    return (
        _leaf_builder(
            root_cert,
            subject,
            public_key,
            x509.random_serial_number(),
            not_before,
            min(not_after, root_cert.not_valid_after_utc),
            key_id(root_key.public_key()),
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), True)
        .sign(root_key, signature_hash(root_key))
    )


def snapshot_signer_certificate(
    root_key: CertificateIssuerPrivateKeyTypes,
    root_cert: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    not_before: datetime,
    not_after: datetime,
    subject: x509.Name | None = None,
) -> x509.Certificate:
    """The certificate of the HSM key that signs snapshot manifests."""
    return _root_signed_signer(
        root_key,
        root_cert,
        public_key,
        subject or snapshot_signer_name(),
        not_before,
        not_after,
        OID_SNAPSHOT_SIGNING,
    )


def verifier_token_signer_certificate(
    root_key: CertificateIssuerPrivateKeyTypes,
    root_cert: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    not_before: datetime,
    not_after: datetime,
    subject: x509.Name | None = None,
) -> x509.Certificate:
    """The certificate of the HSM key that signs verifier tokens (特定利用者証明検証者証明符号)."""
    return _root_signed_signer(
        root_key,
        root_cert,
        public_key,
        subject or verifier_token_signer_name(),
        not_before,
        not_after,
        OID_VERIFIER_TOKEN_SIGNING,
    )


def _leaf_builder(
    issuer_cert: x509.Certificate,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    issuer_key_id: bytes,
    *,
    content_commitment: bool = False,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            key_usage(digital_signature=True, content_commitment=content_commitment), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(x509.AuthorityKeyIdentifier(issuer_key_id, None, None), False)
    )


def _der_utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    n = len(data)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x0c" + length + data


def distribution_point(
    settings: ProfileSettings, kind: CertKind, issuer_key_id: bytes, partition: str
) -> list[x509.GeneralName]:
    """The partition's name: the same in certificates (CRLDP) and CRLs (IDP)."""
    return [
        x509.UniformResourceIdentifier(settings.crl_url(kind, issuer_key_id, partition)),
        x509.DirectoryName(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{kind.slug} CRL"),
                    x509.NameAttribute(
                        NameOID.COMMON_NAME, f"{partition}/{issuer_key_id.hex()[:16]}"
                    ),
                ]
            )
        ),
    ]


def end_entity_certificate(
    settings: ProfileSettings,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    issuer_cert: x509.Certificate,
    *,
    kind: CertKind,
    public_key: CertificatePublicKeyTypes,
    serial: int,
    holder: Holder,
    partition: str,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A holder's certificate of `kind`.

    Signing kinds name the holder and carry the four basic facts; user-authentication
    kinds carry no personal data (their subject is an opaque identifier), as in JPKI.
    """
    issuer_key_id = key_id(issuer_key.public_key())
    if kind.is_signing:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                x509.NameAttribute(NameOID.LOCALITY_NAME, partition),
                x509.NameAttribute(NameOID.COMMON_NAME, holder.name),
            ]
        )
    else:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{serial:016X}{kind.value}"),
            ]
        )
    builder = _leaf_builder(
        issuer_cert,
        subject,
        public_key,
        serial,
        not_before,
        min(not_after, issuer_cert.not_valid_after_utc),
        issuer_key_id,
        content_commitment=kind.is_signing,
    )
    if kind.is_signing:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.OtherName(OID_HOLDER_NAME, _der_utf8(holder.name)),
                    x509.OtherName(OID_HOLDER_ADDRESS, _der_utf8(holder.address)),
                    x509.OtherName(OID_HOLDER_BIRTH_DATE, _der_utf8(holder.birth_date)),
                    x509.OtherName(OID_HOLDER_SEX, _der_utf8(holder.sex)),
                ]
            ),
            False,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False
        )
    builder = (
        builder.add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(policy_oid(kind.value), None)]),
            False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=distribution_point(settings, kind, issuer_key_id, partition),
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            False,
        )
        .add_extension(
            # RFC 5280 §5.2.6: where the delta CRLs of this certificate's partition are.
            x509.FreshestCRL(
                [
                    x509.DistributionPoint(
                        full_name=[
                            x509.UniformResourceIdentifier(
                                settings.delta_crl_url(kind, issuer_key_id, partition)
                            )
                        ],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        x509.oid.AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(settings.ocsp_url),
                    ),
                    _ca_issuers(settings.ca_certificate_url(kind, issuer_key_id)),
                ]
            ),
            False,
        )
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))


def ocsp_signer_certificate(
    issuer_key: CertificateIssuerPrivateKeyTypes,
    issuer_cert: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A delegated OCSP-signer certificate (RFC 6960 §4.2.2.2), short-lived, no-check."""
    return (
        _leaf_builder(
            issuer_cert,
            subject,
            public_key,
            x509.random_serial_number(),
            not_before,
            min(not_after, issuer_cert.not_valid_after_utc),
            key_id(issuer_key.public_key()),
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), True)
        .add_extension(x509.OCSPNoCheck(), False)
        .sign(issuer_key, signature_hash(issuer_key))
    )


def chain_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def throwaway_client_certificate(name: str, validity: timedelta) -> x509.Certificate:
    """A self-signed certificate whose key is thrown away: over plaintext loopback a
    verifier is registered by its certificate's fingerprint alone (demo, bench, tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + validity)
        .sign(key, hashes.SHA256())
    )
