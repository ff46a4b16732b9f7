"""CRL profiles: what every CRL and ARL we sign contains."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)

from jpki_va.core.domain import CertKind, CrlReason, LossCause
from jpki_va.core.oids import OID_LOSS_CAUSE
from jpki_va.server.pki.cert_profile import (
    ProfileSettings,
    distribution_point,
    key_id,
    signature_hash,
)


@dataclass(frozen=True, slots=True)
class CrlEntry:
    serial: int
    time: datetime
    cause: LossCause
    reason: CrlReason


def crl(
    settings: ProfileSettings,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    issuer_cert: x509.Certificate,
    *,
    kind: CertKind,
    partition: str,
    number: int,
    this_update: datetime,
    next_update: datetime,
    entries: Iterable[CrlEntry],
    delta_base: int | None = None,
) -> x509.CertificateRevocationList:
    """A partition CRL (or delta CRL when delta_base is the base CRL number).

    Each entry carries the law's loss cause in a private non-critical entry
    extension beside the RFC 5280 reason code, so the signed CRL alone tells the
    responder everything it answers about a revocation.
    """
    issuer_key_id = key_id(issuer_key.public_key())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.AuthorityKeyIdentifier(issuer_key_id, None, None), False)
        .add_extension(x509.CRLNumber(number), False)
        .add_extension(
            x509.IssuingDistributionPoint(
                full_name=distribution_point(settings, kind, issuer_key_id, partition),
                relative_name=None,
                only_contains_user_certs=True,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            ),
            True,
        )
    )
    if delta_base is not None:
        builder = builder.add_extension(x509.DeltaCRLIndicator(delta_base), True)
    else:
        # RFC 5280 §5.2.6: where this complete CRL's deltas are, as the certificates
        # say; validators that use deltas (RFC 5280 §6.3.3 (c)) look here.
        delta_url = settings.delta_crl_url(kind, issuer_key_id, partition)
        builder = builder.add_extension(
            x509.FreshestCRL(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(delta_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            False,
        )
    for entry in entries:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.time)
            .add_extension(
                x509.UnrecognizedExtension(OID_LOSS_CAUSE, bytes([0x0A, 0x01, entry.cause])),
                False,
            )
        )
        # RFC 5280 §5.3.1: the reasonCode unspecified SHOULD be absent.
        if entry.reason is not CrlReason.UNSPECIFIED:
            revoked = revoked.add_extension(x509.CRLReason(entry.reason.to_x509()), False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(issuer_key, signature_hash(issuer_key))


def authority_revocation_list(
    settings: ProfileSettings,
    root_key: CertificateIssuerPrivateKeyTypes,
    root_cert: x509.Certificate,
    *,
    number: int,
    this_update: datetime,
    next_update: datetime,
    revoked: Iterable[tuple[int, datetime]],
) -> x509.CertificateRevocationList:
    """The root's ARL: issuing-CA certificates revoked for key compromise (第14条).

    Entries are (issuing CA certificate serial, compromise time), reason cACompromise.
    Published with every full snapshot, empty or not: a validator that checks every
    certificate of a path needs it for the issuing CA too.
    """
    root_key_id = key_id(root_key.public_key())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.AuthorityKeyIdentifier(root_key_id, None, None), False)
        .add_extension(x509.CRLNumber(number), False)
        .add_extension(
            # The name the issuing CA certificates carry in their CRLDP (RFC 5280 §6.3.3).
            x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(settings.arl_url(root_key_id))],
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=True,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            ),
            True,
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(when)
            .add_extension(x509.CRLReason(x509.ReasonFlags.ca_compromise), False)
            .build()
        )
    return builder.sign(root_key, signature_hash(root_key))


def crl_entry_cause(entry: x509.RevokedCertificate) -> LossCause | None:
    """The loss cause a CRL entry of ours carries, or None for a foreign entry."""
    try:
        ext = entry.extensions.get_extension_for_oid(OID_LOSS_CAUSE)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    raw = value.value
    if len(raw) != 3 or raw[0] != 0x0A or raw[1] != 0x01:
        raise ValueError("malformed loss-cause CRL entry extension")
    return LossCause(raw[2])


def crl_entry_reason(entry: x509.RevokedCertificate) -> CrlReason:
    try:
        ext = entry.extensions.get_extension_for_class(x509.CRLReason)
    except x509.ExtensionNotFound:
        return CrlReason.UNSPECIFIED
    return CrlReason.from_x509(ext.value.reason)
