"""第16条の2 and 第35条の2: the smartphone application in two steps, through the real signer.

Step one notifies the four basic items signed with the CARD_SIGN key; step two the
device's public key with its proof of possession (a PKCS#10 request). Every refusal
names its condition and records nothing: no application, no certificate.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from jpki_va.core.clock import FixedClock
from jpki_va.core.domain import CertKind, LinkType, serial_to_bytes
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from jpki_va.server.law.mobile_issuance import notice_digest
from tests.support import (
    TARO,
    Issued,
    Pki,
    device_csr,
    fresh_key,
    mobile_notice,
    running_pki,
    sign_notice,
)


@pytest.fixture(scope="module")
def pki(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig, clock: FixedClock
) -> Iterator[Pki]:
    with running_pki(tmp_path_factory.mktemp("mobile"), softhsm_token, clock=clock) as running:
        yield running


_codes = iter(range(10_000))


def _card(pki: Pki, kind: CertKind = CertKind.CARD_SIGN, code: str | None = None) -> Issued:
    return pki.issue(kind, resident_code=code or f"{61000000000 + next(_codes):011d}")


def _begin(
    pki: Pki,
    kind: CertKind,
    notice: bytes,
    signature: bytes,
    card: Issued,
) -> signer_pb2.BeginMobileApplicationResponse:
    return pki.signer_stub.BeginMobileApplication(
        signer_pb2.BeginMobileApplicationRequest(
            kind=int(kind),  # type: ignore[arg-type]
            notice=notice,
            notice_signature=signature,
            card_certificate_der=_der(card),
        ),
        timeout=30,
    )


def _der(card: Issued) -> bytes:
    return card.certificate.public_bytes(serialization.Encoding.DER)


def _complete(pki: Pki, application_id: str, csr: bytes) -> signer_pb2.IssueCertificateResponse:
    return pki.signer_stub.CompleteMobileApplication(
        signer_pb2.CompleteMobileApplicationRequest(application_id=application_id, csr=csr),
        timeout=30,
    ).issued


def _mark(pki: Pki) -> str:
    with pki.signer.registry.read() as tx:
        return tx.change_mark()


def _begin_refused(
    pki: Pki, kind: CertKind, notice: bytes, signature: bytes, card: Issued
) -> grpc.RpcError:
    before = _mark(pki)
    with pytest.raises(grpc.RpcError) as info:
        _begin(pki, kind, notice, signature, card)
    with pki.signer.registry.read() as tx:
        assert tx.notice_application(notice_digest(notice, _der(card))) is None
        assert tx.change_mark() == before
    return info.value


def _complete_refused(pki: Pki, application_id: str, csr: bytes) -> grpc.RpcError:
    with pki.signer.registry.read() as tx:
        before = (tx.change_mark(), tx.mobile_application(application_id))
    with pytest.raises(grpc.RpcError) as info:
        _complete(pki, application_id, csr)
    with pki.signer.registry.read() as tx:
        assert (tx.change_mark(), tx.mobile_application(application_id)) == before
    return info.value


# 第16条の2 -------------------------------------------------------------------------------
def test_article_16_2_mobile_sign_in_two_steps_carries_the_notified_items(
    pki: Pki, clock: FixedClock
) -> None:
    card = _card(pki)
    # Full-width space and digits: the same items as the record once normalised.
    begun = pki.begin_mobile(CertKind.MOBILE_SIGN, card, name="試験\u3000太郎")
    assert begun.holder.name == "試験\u3000太郎" and begun.holder.sex == TARO["sex"]
    assert int.from_bytes(begun.card_serial, "big") == card.serial
    expires = begun.expires_at.ToDatetime(tzinfo=UTC)
    assert clock.now() < expires <= clock.now() + timedelta(hours=1)
    reply = _complete(pki, begun.application_id, device_csr(fresh_key()))
    assert CertKind(reply.kind) is CertKind.MOBILE_SIGN
    cert = x509.load_der_x509_certificate(reply.certificate_der)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "試験\u3000太郎"
    for item in (TARO["address"], TARO["birth_date"], TARO["sex"]):
        assert item.encode() in reply.certificate_der
    # It does not outlive the card it rests on.
    assert cert.not_valid_after_utc <= card.certificate.not_valid_after_utc
    pki.publish_and_wait(full=False)
    serial = int.from_bytes(reply.serial, "big")
    assert pki.check(CertKind.MOBILE_SIGN, serial, clock.now()).status == (va_pb2.CERT_STATUS_GOOD)
    with pki.live_index() as index:
        links = index.links(CertKind.MOBILE_SIGN, serial)
    assert any(
        link.type is LinkType.CARD_SIGN_MOBILE_SIGN
        and card.serial in (link.a_serial, link.b_serial)
        for link in links
    )
    # An application is used once.
    error = _complete_refused(pki, begun.application_id, device_csr(fresh_key()))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "already used" in (error.details() or "")


def test_article_16_2_step_one_refusals_name_the_condition(pki: Pki, clock: FixedClock) -> None:
    card, other = _card(pki), _card(pki)
    kind = CertKind.MOBILE_SIGN
    notice = mobile_notice(kind, clock.now())

    # Signed by another card's key, presented with this card's certificate.
    error = _begin_refused(pki, kind, notice, sign_notice(other.key, notice), card)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert f"not signed with the key of CARD_SIGN serial {card.serial:X}" in (error.details() or "")
    # Items that differ from the holder's record (the 花子/女 application on 太郎's card).
    for items, label in (({"name": "試験 花子"}, "name"), ({"sex": "女"}, "sex")):
        wrong = mobile_notice(kind, clock.now(), **items)
        error = _begin_refused(pki, kind, wrong, sign_notice(card.key, wrong), card)
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert f"notified {label} does not match the holder's resident record" in (
            error.details() or ""
        )
    # Signed long ago, or for the other purpose.
    stale = mobile_notice(kind, clock.now() - timedelta(hours=1))
    error = _begin_refused(pki, kind, stale, sign_notice(card.key, stale), card)
    assert "more than 10 minutes from now" in (error.details() or "")
    error = _begin_refused(pki, CertKind.MOBILE_AUTH, notice, sign_notice(card.key, notice), card)
    assert "applies for MOBILE_SIGN, not MOBILE_AUTH" in (error.details() or "")
    # Not in the format: INVALID_ARGUMENT.
    error = _begin_refused(pki, kind, b"name: x\n", sign_notice(card.key, b"name: x\n"), card)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "the notice must be exactly the lines" in (error.details() or "")
    # A card certificate J-LIS never issued (a self-made one with the card's serial).
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "試験 太郎")])
    self_made = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(card.key.public_key())
        .serial_number(card.serial)
        .not_valid_before(clock.now())
        .not_valid_after(clock.now() + timedelta(days=1))
        .sign(card.key, hashes.SHA256())
    )
    forged = Issued(card.kind, card.serial, self_made, card.issuer, card.key)
    error = _begin_refused(pki, kind, notice, sign_notice(card.key, notice), forged)
    assert "no certificate J-LIS issued" in (error.details() or "")

    # One notice begins one application.
    signature = sign_notice(card.key, notice)
    _begin(pki, kind, notice, signature, card)
    with pytest.raises(grpc.RpcError) as info:
        _begin(pki, kind, notice, signature, card)
    assert "already began an application" in (info.value.details() or "")

    # A CARD_SIGN that lost effect supports no notice (第15条第1項).
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_SIGN,
            serial=serial_to_bytes(other.serial),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )
    fresh = mobile_notice(kind, clock.now())
    error = _begin_refused(pki, kind, fresh, sign_notice(other.key, fresh), other)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert f"CARD_SIGN serial {other.serial:X} has lost effect" in (error.details() or "")


def test_article_16_2_step_two_refusals_name_the_condition(pki: Pki, clock: FixedClock) -> None:
    card = _card(pki)
    # Complete without begin.
    error = _complete_refused(pki, secrets.token_hex(16), device_csr(fresh_key()))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "begin one with a signed notice first" in (error.details() or "")
    begun = pki.begin_mobile(CertKind.MOBILE_SIGN, card)
    # A key already certified: the card's own.
    error = _complete_refused(pki, begun.application_id, device_csr(card.key))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "already certified" in (error.details() or "")
    # No proof of possession: a request whose signature does not verify.
    csr = bytearray(device_csr(fresh_key()))
    csr[-5] ^= 0xFF
    error = _complete_refused(pki, begun.application_id, bytes(csr))
    assert "no proof that the applicant holds the private key" in (error.details() or "")
    error = _complete_refused(pki, begun.application_id, b"not a request")
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    # Expired: the application waits 30 minutes.
    clock.advance(timedelta(minutes=31))
    try:
        error = _complete_refused(pki, begun.application_id, device_csr(fresh_key()))
    finally:
        clock.advance(timedelta(minutes=-31))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "expired at" in (error.details() or "")
    # Within its time it completes.
    _complete(pki, begun.application_id, device_csr(fresh_key()))


# 第35条の2 -------------------------------------------------------------------------------
def test_article_35_2_mobile_auth_needs_card_auth_and_the_card_sign_signature(
    pki: Pki, clock: FixedClock
) -> None:
    code = f"{62000000000 + next(_codes):011d}"
    card_sign = _card(pki, code=code)
    kind = CertKind.MOBILE_AUTH
    # A signing user without a CARD_AUTH.
    notice = mobile_notice(kind, clock.now())
    error = _begin_refused(pki, kind, notice, sign_notice(card_sign.key, notice), card_sign)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "needs a CARD_AUTH certificate in effect" in (error.details() or "")
    card_auth = pki.issue(CertKind.CARD_AUTH, resident_code=code, key=fresh_key())
    # The notice is signed with the CARD_SIGN key (第35条の2第2項), not the CARD_AUTH one.
    notice = mobile_notice(kind, clock.now())
    error = _begin_refused(pki, kind, notice, sign_notice(card_auth.key, notice), card_auth)
    assert "must be signed with a CARD_SIGN certificate's key" in (error.details() or "")
    assert "is a CARD_AUTH certificate" in (error.details() or "")
    mobile = pki.issue(kind, card=card_sign, key=fresh_key())
    assert mobile.certificate.not_valid_after_utc <= card_auth.certificate.not_valid_after_utc
    pki.publish_and_wait(full=False)
    assert pki.check(kind, mobile.serial, clock.now()).status == va_pb2.CERT_STATUS_GOOD
    with pki.live_index() as index:
        links = index.links(kind, mobile.serial)
    assert any(
        link.type is LinkType.CARD_AUTH_MOBILE_AUTH and link.a_serial == card_auth.serial
        for link in links
    )


def test_issue_certificate_refuses_mobile_kinds(pki: Pki) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    before = _mark(pki)
    with pytest.raises(grpc.RpcError) as info:
        pki.signer_stub.IssueCertificate(
            signer_pb2.IssueCertificateRequest(
                kind=va_pb2.CERT_KIND_MOBILE_SIGN,
                resident_code="61999999999",
                municipality_code="131016",
                holder=signer_pb2.HolderInfo(**TARO),
                public_key_der=key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            ),
            timeout=30,
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "BeginMobileApplication" in (info.value.details() or "")
    assert _mark(pki) == before
    # The fields of the one-step application it replaced are refused, not ignored.
    with pytest.raises(grpc.RpcError) as info:
        pki.signer_stub.IssueCertificate(
            signer_pb2.IssueCertificateRequest(
                kind=va_pb2.CERT_KIND_CARD_SIGN, application_signature=b"\x01"
            ),
            timeout=30,
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "one-step mobile application" in (info.value.details() or "")
    assert _mark(pki) == before
