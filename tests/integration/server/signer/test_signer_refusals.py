"""Bad operator input gets a clear gRPC error and changes nothing in the registry."""

from __future__ import annotations

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jpki_va.core.domain import CertKind
from jpki_va.protos import signer_pb2, va_pb2
from tests.support import Issued, Pki, fresh_key, register_verifier


def registry_mark(pki: Pki) -> str:
    with pki.signer.registry.read() as tx:
        return tx.change_mark()


def spki(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def compressed_spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The P-256 SubjectPublicKeyInfo with the point compressed (SEC 1 §2.3.3)."""
    algorithm = spki(key)[2:23]  # SEQUENCE { id-ecPublicKey, prime256v1 }
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return b"\x30\x39" + algorithm + b"\x03\x22\x00" + point


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


# consent (issue 15 item 12) ---------------------------------------------------------------
def test_consent_to_an_unregistered_verifier_is_refused_and_records_nothing(
    pki: Pki, card: Issued
) -> None:
    grant = signer_pb2.RecordConsentRequest(
        resident_code="66666666666", verifier="bank-unregistered", grant=True
    )
    error = refused(pki, pki.signer_stub.RecordConsent, grant)
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "'bank-unregistered'" in (error.details() or "")
    with pki.signer.registry.read() as tx:
        assert tx.consent("66666666666", "bank-unregistered") is None
    # Registered, the same grant is recorded.
    register_verifier(pki, "bank-unregistered")
    reply = pki.signer_stub.RecordConsent(grant, timeout=30)
    assert reply.consent.verifier == "bank-unregistered"
    assert not reply.consent.HasField("withdrawn_at")


# one key pair per certificate (issue 15 item 12) ------------------------------------------
def test_a_key_certified_for_one_resident_is_refused_for_another(pki: Pki) -> None:
    key = fresh_key()
    first = pki.issue(CertKind.CARD_AUTH, resident_code="56000000001", key=key)
    request = issue_request(
        kind=va_pb2.CERT_KIND_CARD_AUTH, resident_code="56000000002", public_key_der=spki(key)
    )
    error = refused(pki, pki.signer_stub.IssueCertificate, request)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert f"already certified in another holder's CARD_AUTH serial {first.serial:X}" in (
        error.details() or ""
    )
    assert "new key pair" in (error.details() or "")
    with pki.signer.registry.read() as tx:
        assert tx.holder_certificates("56000000002") == []


def test_a_key_is_certified_once_for_the_same_holder_too(pki: Pki) -> None:
    key = fresh_key()
    first = pki.issue(CertKind.CARD_SIGN, resident_code="56000000003", key=key)
    for kind in (va_pb2.CERT_KIND_CARD_AUTH, va_pb2.CERT_KIND_CARD_SIGN):  # another kind; renewal
        request = issue_request(kind=kind, resident_code="56000000003", public_key_der=spki(key))
        error = refused(pki, pki.signer_stub.IssueCertificate, request)
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert f"this holder's CARD_SIGN serial {first.serial:X}" in (error.details() or "")
    # The same key in its other encoding (a compressed point) is the same key.
    request = issue_request(resident_code="56000000004", public_key_der=compressed_spki(key))
    error = refused(pki, pki.signer_stub.IssueCertificate, request)
    assert "another holder's CARD_SIGN" in (error.details() or "")
    # A new key pair is certified, and the earlier certificate stays in effect.
    pki.issue(CertKind.CARD_AUTH, resident_code="56000000003", key=fresh_key())
    with pki.signer.registry.read() as tx:
        record = tx.certificate(CertKind.CARD_SIGN, first.serial)
        assert record is not None and record.loss is None
