"""第16条の2, 第35条の2: the mobile application, a two-step exchange.

Step one (第2項・第3項), `check_notice`: the applicant notifies the four basic items of
their resident record (住民基本台帳法第7条第1号〜第3号・第7号: name, birth date, sex,
address), signed with the key of their CARD_SIGN (署名利用者符号). J-LIS confirms that
this CARD_SIGN has not lost effect (第15条第1項) and that the signature was made with its
key, and tells the applicant so: the application, with an expiry.

Step two (第4項〜第6項), `check_proof_of_possession` and `check_basis` again: the
applicant makes the key pair in the device and notifies the public key; J-LIS issues
the certificate, which carries the notified items.

MOBILE_AUTH (第35条の2) is the same exchange, with the notice signed with the
CARD_SIGN key too (第35条の2第2項 says 署名用電子証明書に係る署名利用者符号), by a holder
who was issued a CARD_AUTH and is a signing user (第1項). The law asks only that the
CARD_AUTH was issued; we also require it to be in effect, since a mobile auth
certificate resting on a lost one would lose effect at once (第35条の13).

What the law leaves to ordinance and we chose (README, "The law"):

* The notice is UTF-8 text, one `key: value` line each (`NOTICE_KEYS`): the kind
  applied for, the four items, and when it was signed; the signature is the CARD_SIGN
  key's SHA-256 signature over the notice's bytes (`openssl dgst -sha256 -sign`).
* It must be signed within `NOTICE_FRESHNESS` of its arrival, and one notice begins one
  application: a copy of a notice begins nothing.
* The items must equal those of the holder's current record. A change of any of them
  ends the CARD_SIGN (第12条), so a CARD_SIGN in effect carries the current record.
* The public key comes in a PKCS#10 request, whose signature proves the applicant holds
  its private key.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from jpki_va.core.domain import CertKind, Status
from jpki_va.server.law.errors import Refused
from jpki_va.server.law.registry_port import RegistryPort
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import CertificateRecord

#: The notice's lines, in this order.
NOTICE_KEYS = ("kind", "name", "birth_date", "sex", "address", "signed_at")
#: How far the notice's signed_at may lie from its arrival, either way.
NOTICE_FRESHNESS = timedelta(minutes=10)
#: How long an application confirmed at step one waits for its public key.
APPLICATION_VALIDITY = timedelta(minutes=30)
#: The largest notice read: four items and a timestamp are far smaller.
MAX_NOTICE = 4096

_ITEMS = {"name": "name", "birth_date": "birth date", "sex": "sex", "address": "address"}


class BadNotice(ValueError):
    """The notice is not in the format (not a refusal of the law: bad input)."""


@dataclass(frozen=True)
class Notice:
    """A parsed notice of the four basic items (第16条の2第2項前段)."""

    kind: CertKind
    holder: Holder
    signed_at: datetime


@dataclass(frozen=True)
class MobileBasis:
    """What a mobile certificate rests on."""

    card_sign: CertificateRecord  # whose key signed the notice
    card: CertificateRecord  # the card certificate of the same purpose (cascade, mapping)


def parse_notice(data: bytes) -> Notice:
    """The notice's fields; BadNotice names what is wrong with the format."""
    if len(data) > MAX_NOTICE:
        raise BadNotice(f"the notice is longer than {MAX_NOTICE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadNotice("the notice is not UTF-8") from None
    lines = text.removesuffix("\n").split("\n")
    keys = [line.split(":", 1)[0].strip() for line in lines]
    if keys != list(NOTICE_KEYS) or any(":" not in line for line in lines):
        raise BadNotice(
            f"the notice must be exactly the lines {', '.join(k + ': …' for k in NOTICE_KEYS)}"
        )
    fields = {k: line.split(":", 1)[1].strip() for k, line in zip(keys, lines, strict=True)}
    empty = [k for k, v in fields.items() if not v]
    if empty:
        raise BadNotice(f"the notice's {empty[0]} is empty")
    try:
        kind = CertKind.from_slug(fields["kind"])  # MOBILE_SIGN or mobile-sign
    except ValueError:
        raise BadNotice(f"the notice's kind {fields['kind']!r} is not a certificate kind") from None
    try:
        signed_at = datetime.fromisoformat(fields["signed_at"].replace("Z", "+00:00"))
    except ValueError:
        raise BadNotice("the notice's signed_at is not an ISO 8601 time") from None
    if signed_at.tzinfo is None:
        raise BadNotice("the notice's signed_at has no time zone (end it with Z or +09:00)")
    holder = Holder(
        name=fields["name"],
        address=fields["address"],
        birth_date=fields["birth_date"],
        sex=fields["sex"],
    )
    return Notice(kind, holder, signed_at)


def format_notice(kind: CertKind, holder: Holder, signed_at: datetime) -> bytes:
    """A notice in the format `parse_notice` reads (what an applicant's app writes)."""
    fields = {
        "kind": kind.name,
        "name": holder.name,
        "birth_date": holder.birth_date,
        "sex": holder.sex,
        "address": holder.address,
        "signed_at": signed_at.isoformat(),
    }
    return "".join(f"{k}: {fields[k]}\n" for k in NOTICE_KEYS).encode()


def notice_digest(notice: bytes, card_certificate_der: bytes) -> bytes:
    """What identifies a notice, so that one begins one application only: the notice and
    the card whose key signed it (two holders may notify the same items at one time)."""
    return hashlib.sha256(hashlib.sha256(card_certificate_der).digest() + notice).digest()


def _in_effect(record: CertificateRecord, now: datetime) -> bool:
    return record.status_record().status_at(now) is Status.GOOD


def _verify(card: CertificateRecord, signature: bytes, data: bytes) -> None:
    public = x509.load_der_x509_certificate(card.certificate_der).public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise Refused(f"CARD_SIGN serial {card.serial:X} has a key that cannot sign notices")
    except InvalidSignature:
        raise Refused(
            f"the notice is not signed with the key of CARD_SIGN serial {card.serial:X} "
            "(signed by another card, or changed after signing) (第16条の2第3項)"
        ) from None


def _same(a: str, b: str) -> bool:
    # Full-width and half-width forms of one character are one item, as on the record.
    return unicodedata.normalize("NFKC", a).split() == unicodedata.normalize("NFKC", b).split()


def check_notice(
    tx: RegistryPort,
    *,
    kind: CertKind,
    notice: bytes,
    signature: bytes,
    card_certificate_der: bytes,
    now: datetime,
) -> tuple[Notice, MobileBasis]:
    """Step one: the notice and what it rests on, or refuse with the failed condition."""
    if not kind.is_mobile:
        raise BadNotice(f"{kind.name} is not a mobile kind")
    parsed = parse_notice(notice)
    if parsed.kind is not kind:
        raise Refused(f"the notice applies for {parsed.kind.name}, not {kind.name}")
    if abs(now - parsed.signed_at) > NOTICE_FRESHNESS:
        raise Refused(
            f"the notice was signed at {parsed.signed_at.isoformat()}, more than "
            f"{int(NOTICE_FRESHNESS.total_seconds() // 60)} minutes from now: sign a new one"
        )
    try:
        presented = x509.load_der_x509_certificate(card_certificate_der)
    except ValueError:
        raise BadNotice("the card certificate is not DER X.509") from None
    card = tx.certificate(CertKind.CARD_SIGN, presented.serial_number)
    if card is None or card.certificate_der != card_certificate_der:
        other = [
            k
            for k in CertKind
            if k is not CertKind.CARD_SIGN and tx.certificate(k, presented.serial_number)
        ]
        what = f"a {other[0].name} certificate" if other else "no certificate J-LIS issued"
        raise Refused(
            f"the notice must be signed with a CARD_SIGN certificate's key "
            f"(第16条の2第2項, 第35条の2第2項): serial {presented.serial_number:X} is {what}"
        )
    if not _in_effect(card, now):
        raise Refused(f"CARD_SIGN serial {card.serial:X} has lost effect or expired (第15条第1項)")
    _verify(card, signature, notice)
    for field, label in _ITEMS.items():
        if not _same(getattr(parsed.holder, field), getattr(card.holder, field)):
            raise Refused(
                f"the notified {label} does not match the holder's resident record "
                "(住民基本台帳法第7条)"
            )
    return parsed, check_basis(tx, kind, card, now)


def check_basis(
    tx: RegistryPort, kind: CertKind, card_sign: CertificateRecord, now: datetime
) -> MobileBasis:
    """The card certificates the mobile one rests on, as they stand now (both steps)."""
    current = tx.certificate(CertKind.CARD_SIGN, card_sign.serial)
    if current is None or not _in_effect(current, now):
        raise Refused(
            f"CARD_SIGN serial {card_sign.serial:X} has lost effect or expired (第15条第1項)"
        )
    if kind is CertKind.MOBILE_SIGN:
        return MobileBasis(card_sign=current, card=current)
    card_auth = [
        r
        for r in tx.holder_certificates(current.resident_code)
        if r.kind is CertKind.CARD_AUTH and _in_effect(r, now)
    ]
    if not card_auth:
        raise Refused(
            "MOBILE_AUTH needs a CARD_AUTH certificate in effect for the same holder "
            "(第35条の2第1項)"
        )
    newest = max(card_auth, key=lambda r: r.not_before)
    return MobileBasis(card_sign=current, card=newest)


def check_proof_of_possession(csr_der: bytes) -> x509.CertificateSigningRequest:
    """Step two's public key, in a PKCS#10 request whose signature proves possession."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError:
        try:
            csr = x509.load_pem_x509_csr(csr_der)
        except ValueError:
            raise BadNotice("the public key must come as a PKCS#10 request (DER or PEM)") from None
    if not csr.is_signature_valid:
        raise Refused(
            "the PKCS#10 request's signature does not verify: no proof that the applicant "
            "holds the private key"
        )
    return csr
