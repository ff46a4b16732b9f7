"""第16条の2, 第35条の2: who may be issued a mobile certificate.

MOBILE_SIGN (第16条の2): the applicant holds a CARD_SIGN that has not lost effect
(第15条第1項), and the application is signed with that card's key.

MOBILE_AUTH (第35条の2): the applicant holds a CARD_AUTH and is also a signing user;
the application is signed with the CARD_SIGN key, and that CARD_SIGN has not lost
effect. The law asks only that the CARD_AUTH was issued; we also require it to be
in effect, since a mobile auth certificate for a lost card auth certificate would
lose effect at once by the cascade (第35条の13).

The application signature is the card key's SHA-256 signature over the DER
SubjectPublicKeyInfo of the new mobile key (`openssl dgst -sha256 -sign`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from jpki_va.core.domain import CertKind, Status
from jpki_va.server.law.errors import Refused
from jpki_va.server.law.registry_port import RegistryPort
from jpki_va.server.model.registry_values import CertificateRecord


def _in_effect(record: CertificateRecord, now: datetime) -> bool:
    return record.status_record().status_at(now) is Status.GOOD


@dataclass(frozen=True)
class MobileBasis:
    """What a mobile certificate rests on."""

    card_sign: CertificateRecord  # whose key signed the application
    card: CertificateRecord  # the card certificate of the same purpose (cascade, mapping)


def check_mobile_application(
    tx: RegistryPort,
    *,
    kind: CertKind,
    resident_code: str,
    card_serial: int | None,
    application_signature: bytes,
    public_key_der: bytes,
    now: datetime,
) -> MobileBasis:
    """Return what the application rests on, or refuse with the failed condition."""
    if not kind.is_mobile:
        raise ValueError(f"{kind.name} is not a mobile kind")
    if card_serial is None:
        raise Refused(f"{kind.name} needs the serial of the applicant's CARD_SIGN certificate")
    card = tx.certificate(CertKind.CARD_SIGN, card_serial)
    if card is None:
        raise Refused(f"CARD_SIGN serial {card_serial:X} was never issued")
    if card.resident_code != resident_code:
        raise Refused(f"CARD_SIGN serial {card_serial:X} belongs to another holder")
    if not _in_effect(card, now):
        raise Refused(f"CARD_SIGN serial {card_serial:X} has lost effect")
    if not application_signature:
        raise Refused("the application is not signed with the CARD_SIGN key")
    public = x509.load_der_x509_certificate(card.certificate_der).public_key()
    signature, data = application_signature, public_key_der
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise Refused("the CARD_SIGN key type cannot sign applications")
    except InvalidSignature:
        raise Refused(
            "the application signature does not verify with the CARD_SIGN certificate"
        ) from None
    if kind is CertKind.MOBILE_SIGN:
        return MobileBasis(card_sign=card, card=card)
    card_auth = [
        r
        for r in tx.holder_certificates(resident_code)
        if r.kind is CertKind.CARD_AUTH and _in_effect(r, now)
    ]
    if not card_auth:
        raise Refused("MOBILE_AUTH needs a CARD_AUTH certificate in effect for the same holder")
    newest = max(card_auth, key=lambda r: r.not_before)
    return MobileBasis(card_sign=card, card=newest)
