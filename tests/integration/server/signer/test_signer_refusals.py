"""Bad operator input gets a clear gRPC error and changes nothing in the registry."""

from __future__ import annotations

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from jpki_va.core.domain import CertKind
from jpki_va.protos import signer_pb2, va_pb2
from tests.support import Issued, Pki


def registry_mark(pki: Pki) -> str:
    with pki.signer.registry.read() as tx:
        return tx.change_mark()


def spki(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issue_request(**overrides: object) -> signer_pb2.IssueCertificateRequest:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fields: dict[str, object] = {
        "kind": va_pb2.CERT_KIND_CARD_SIGN,
        "resident_code": "55555555555",
        "municipality_code": "131016",
        "holder": signer_pb2.HolderInfo(
            name="試験", address="千代田区", birth_date="2000-02-29", sex="女"
        ),
        "public_key_der": spki(key),
    }
    fields.update(overrides)
    return signer_pb2.IssueCertificateRequest(**fields)  # type: ignore[arg-type]


def refused(pki: Pki, call: object, request: object) -> grpc.RpcError:
    before = registry_mark(pki)
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)  # type: ignore[operator]
    assert registry_mark(pki) == before
    return info.value


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"kind": va_pb2.CERT_KIND_UNSPECIFIED}, "kind is required"),
        ({"kind": 9}, "unknown certificate kind"),
        ({"resident_code": "123"}, "resident code"),
        ({"municipality_code": "13101"}, "municipality code"),
        (
            {
                "holder": signer_pb2.HolderInfo(
                    name="x", address="y", birth_date="2000-13-01", sex="z"
                )
            },
            "birth date",
        ),
        (
            {"holder": signer_pb2.HolderInfo(address="y", birth_date="2000-01-01", sex="z")},
            "name is empty",
        ),
        ({"public_key_der": b"\x30\x03\x02\x01\x01"}, "public key"),
        (
            {
                "public_key_der": spki(
                    rsa.generate_private_key(public_exponent=65537, key_size=1024)
                )
            },
            "at least 2048",
        ),
    ],
)
def test_bad_issue_requests(pki: Pki, overrides: dict[str, object], fragment: str) -> None:
    error = refused(pki, pki.signer_stub.IssueCertificate, issue_request(**overrides))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (error.details() or "")


@pytest.fixture(scope="module")
def card(pki: Pki) -> Issued:
    return pki.issue(CertKind.CARD_SIGN, resident_code="66666666666")


def mobile_request(card: Issued, signer_key: rsa.RSAPrivateKey, **overrides: object) -> object:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = spki(key)
    fields: dict[str, object] = {
        "kind": va_pb2.CERT_KIND_MOBILE_SIGN,
        "resident_code": "66666666666",
        "card_serial": card.serial.to_bytes(8, "big"),
        "application_signature": signer_key.sign(body, padding.PKCS1v15(), hashes.SHA256()),
        "public_key_der": body,
    }
    fields.update(overrides)
    return issue_request(**fields)


def test_mobile_application_signed_with_another_key_is_refused(pki: Pki, card: Issued) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    error = refused(pki, pki.signer_stub.IssueCertificate, mobile_request(card, stranger))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "does not verify" in (error.details() or "")


def test_mobile_application_for_another_holder_is_refused(pki: Pki, card: Issued) -> None:
    request = mobile_request(card, card.key, resident_code="77777777777")
    error = refused(pki, pki.signer_stub.IssueCertificate, request)
    assert "another holder" in (error.details() or "")


def test_mobile_application_without_card_serial_is_refused(pki: Pki, card: Issued) -> None:
    request = mobile_request(card, card.key, card_serial=b"")
    error = refused(pki, pki.signer_stub.IssueCertificate, request)
    assert "needs the serial" in (error.details() or "")


def test_mobile_auth_needs_card_auth(pki: Pki, card: Issued) -> None:
    request = mobile_request(card, card.key, kind=va_pb2.CERT_KIND_MOBILE_AUTH)
    error = refused(pki, pki.signer_stub.IssueCertificate, request)
    assert "CARD_AUTH" in (error.details() or "")


def loss(
    issued: Issued, cause: int = va_pb2.LOSS_CAUSE_HOLDER_REQUEST
) -> signer_pb2.RecordLossRequest:
    return signer_pb2.RecordLossRequest(
        kind=int(issued.kind),  # type: ignore[arg-type]
        serial=issued.serial.to_bytes(8, "big"),
        cause=cause,  # type: ignore[arg-type]
    )


def test_loss_is_final(pki: Pki) -> None:
    issued = pki.issue(CertKind.CARD_AUTH)
    pki.signer_stub.RecordLoss(loss(issued), timeout=30)
    error = refused(pki, pki.signer_stub.RecordLoss, loss(issued))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "already lost effect" in (error.details() or "")


def test_loss_of_a_serial_never_issued(pki: Pki, card: Issued) -> None:
    ghost = Issued(CertKind.CARD_SIGN, 0x0BADC0DE, card.certificate, card.issuer, card.key)
    error = refused(pki, pki.signer_stub.RecordLoss, loss(ghost))
    assert error.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "cause",
    [
        va_pb2.LOSS_CAUSE_UNSPECIFIED,
        va_pb2.LOSS_CAUSE_RESIDENT_CHANGE,
        va_pb2.LOSS_CAUSE_CARD_CERT_LOST_EFFECT,
        42,
    ],
)
def test_causes_an_operator_does_not_record(pki: Pki, card: Issued, cause: int) -> None:
    error = refused(pki, pki.signer_stub.RecordLoss, loss(card, cause))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
