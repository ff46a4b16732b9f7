"""特定署名用電子証明書記録情報 (第18条3項): when a signing record may be given.

The record is the serial of a signing certificate and the holder's basic
information (第7条第3号: name, address, birth date, sex); never the resident code.
It is given only

* for a signing certificate (CARD_SIGN or MOBILE_SIGN),
* that has not lost effect (第15条第1項, 第16条の14第1項): a recorded loss of any
  cause, an issuer compromise, or the end of its validity period all refuse,
* with the holder's consent to the verifier that asks. The law speaks of the
  holder's consent to the provision; we keep it per (holder, verifier), stricter.

Who may ask at all (署名検証者等) is the entitlement matrix (law/entitlements.py).
"""

from __future__ import annotations

from jpki_va.core.domain import CertKind, Status
from jpki_va.server.law.errors import Refused

FIELDS = ("name", "address", "birth_date", "sex")


class NotSigningKind(ValueError):
    """Only signing certificates have signing records."""


class NotDisclosable(Refused):
    """The record exists in law but may not be given now; the message says why."""


def check_kind(kind: CertKind) -> None:
    if not kind.is_signing:
        raise NotSigningKind(
            f"{kind.name} is not a signing certificate: only CARD_SIGN and MOBILE_SIGN "
            "have signing records (第18条3項)"
        )


def check_disclosable(kind: CertKind, status: Status, consented: bool) -> None:
    """Return when the record of a known certificate may be given; raise otherwise."""
    check_kind(kind)
    if status is Status.REVOKED:
        raise NotDisclosable("the certificate has lost effect (revoked): no signing record")
    if status is Status.EXPIRED:
        raise NotDisclosable("the certificate has lost effect (expired): no signing record")
    if not consented:
        raise NotDisclosable("the holder has not consented to this verifier receiving the record")
