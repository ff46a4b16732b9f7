"""The whole loop: HSM-signed certificates and CRLs, snapshot, index, gRPC and OCSP.

OpenSSL is the judge of every certificate, CRL and OCSP response we emit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from jpki_va.core.domain import CertKind, CrlReason, LossCause
from jpki_va.protos import signer_pb2, va_pb2
from tests.support import Issued, Pki, openssl


@pytest.fixture(scope="module")
def world(pki: Pki) -> dict[str, Issued]:
    card = pki.issue(CertKind.CARD_SIGN, resident_code="11111111111")
    certs = {
        "good": pki.issue(CertKind.CARD_AUTH),
        "revoked": pki.issue(CertKind.CARD_SIGN),
        "record_error": pki.issue(CertKind.CARD_AUTH),
        "card": card,
        "mobile": pki.issue(CertKind.MOBILE_SIGN, resident_code="11111111111", card=card),
        "other_city": pki.issue(CertKind.CARD_SIGN, municipality="271004"),
    }
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_SIGN,
            serial=certs["revoked"].serial.to_bytes(8, "big"),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            reason=va_pb2.CRL_REASON_KEY_COMPROMISE,
        ),
        timeout=30,
    )
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_AUTH,
            serial=certs["record_error"].serial.to_bytes(8, "big"),
            cause=va_pb2.LOSS_CAUSE_RECORD_ERROR,
        ),
        timeout=30,
    )
    # 第16条の13: the card's loss cascades to the mobile certificate.
    reply = pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_SIGN,
            serial=card.serial.to_bytes(8, "big"),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )
    assert {(c.kind, c.cause) for c in reply.changes} == {
        (va_pb2.CERT_KIND_CARD_SIGN, va_pb2.LOSS_CAUSE_HOLDER_REQUEST),
        (va_pb2.CERT_KIND_MOBILE_SIGN, va_pb2.LOSS_CAUSE_CARD_CERT_LOST_EFFECT),
    }
    pki.publish_and_wait()
    return certs


def check(pki: Pki, ref: va_pb2.CertRef) -> va_pb2.CertificateStatus:
    return pki.status_stub.Check(va_pb2.CheckRequest(cert=ref), timeout=10).status


def by_serial(issued: Issued) -> va_pb2.CertRef:
    return va_pb2.CertRef(
        kind_serial=va_pb2.KindSerial(
            kind=int(issued.kind),  # type: ignore[arg-type]
            serial=issued.serial.to_bytes(8, "big"),
        )
    )


EXPECTED = {
    "good": (va_pb2.CERT_STATUS_GOOD, None, None),
    "revoked": (
        va_pb2.CERT_STATUS_REVOKED,
        LossCause.HOLDER_REQUEST,
        CrlReason.KEY_COMPROMISE,
    ),
    "record_error": (va_pb2.CERT_STATUS_REVOKED, LossCause.RECORD_ERROR, CrlReason.UNSPECIFIED),
    "card": (va_pb2.CERT_STATUS_REVOKED, LossCause.HOLDER_REQUEST, CrlReason.UNSPECIFIED),
    "mobile": (
        va_pb2.CERT_STATUS_REVOKED,
        LossCause.CARD_CERT_LOST_EFFECT,
        CrlReason.CESSATION_OF_OPERATION,
    ),
    "other_city": (va_pb2.CERT_STATUS_GOOD, None, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_by_kind_serial_certificate_and_cert_id(
    pki: Pki, world: dict[str, Issued], name: str
) -> None:
    issued = world[name]
    status, cause, reason = EXPECTED[name]
    issuer = issued.issuer
    public = issuer.public_key()
    key_bits = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    refs = [
        by_serial(issued),
        va_pb2.CertRef(certificate_der=issued.certificate.public_bytes(serialization.Encoding.DER)),
        va_pb2.CertRef(
            cert_id=va_pb2.CertId(
                hash_algorithm="sha256",
                issuer_name_hash=hashlib.sha256(issuer.subject.public_bytes()).digest(),
                issuer_key_hash=hashlib.sha256(key_bits).digest(),
                serial=issued.serial.to_bytes(8, "big"),
            )
        ),
    ]
    for ref in refs:
        answer = check(pki, ref)
        assert answer.status == status
        assert answer.kind == int(issued.kind)
        assert int.from_bytes(answer.serial, "big") == issued.serial
        if cause is None:
            assert not answer.HasField("revocation")
        else:
            assert answer.revocation.cause == int(cause)
            assert answer.revocation.reason == int(reason)  # type: ignore[arg-type]


def test_never_issued_serial_is_unknown_never_good(pki: Pki, world: dict[str, Issued]) -> None:
    answer = check(
        pki,
        va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x12\x34")
        ),
    )
    assert answer.status == va_pb2.CERT_STATUS_UNKNOWN


def _ocsp(pki: Pki, issued: Issued, tmp_path: Path, name: str) -> str:
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, issued.issuer, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    der = pki.status_stub.Ocsp(va_pb2.OcspRequest(der=request), timeout=10).der
    resp = tmp_path / f"{name}.der"
    resp.write_bytes(der)
    cert, issuer = issued.pem_files(tmp_path, name)
    result = openssl(
        "ocsp",
        "-respin", str(resp),
        "-issuer", str(issuer),
        "-cert", str(cert),
        "-CAfile", str(pki.root_file),
    )  # fmt: skip
    assert "Response verify OK" in result.stderr + result.stdout
    return result.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ocsp_response_verifies_with_openssl(
    pki: Pki, world: dict[str, Issued], name: str, tmp_path: Path
) -> None:
    out = _ocsp(pki, world[name], tmp_path, name)
    status, _, reason = EXPECTED[name]
    if status == va_pb2.CERT_STATUS_GOOD:
        assert f"{name}.pem: good" in out
    else:
        assert f"{name}.pem: revoked" in out
        assert reason is not None
        assert f"Reason: {reason.to_x509().value}" in out


def test_ocsp_unknown_serial(pki: Pki, world: dict[str, Issued], tmp_path: Path) -> None:
    issuer = world["good"].issuer
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            hashlib.sha1(issuer.subject.public_bytes()).digest(),
            hashlib.sha1(
                issuer.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.PKCS1
                )
            ).digest(),
            0x0123456789ABCDEF,
            hashes.SHA1(),
        )
        .build()
    )
    der = pki.status_stub.Ocsp(
        va_pb2.OcspRequest(der=request.public_bytes(serialization.Encoding.DER)), timeout=10
    ).der
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    (tmp_path / "u.der").write_bytes(der)
    (tmp_path / "issuer.pem").write_bytes(issuer.public_bytes(serialization.Encoding.PEM))
    result = openssl(
        "ocsp", "-respin", str(tmp_path / "u.der"), "-issuer", str(tmp_path / "issuer.pem"),
        "-serial", "0x0123456789ABCDEF", "-CAfile", str(pki.root_file),
    )  # fmt: skip
    assert ": unknown" in result.stdout
    assert "Response verify OK" in result.stderr


def _latest_snapshot(pki: Pki) -> Path:
    return sorted(pki.signer.config.snapshot_dir.glob("snap-*"))[-1]


def test_every_published_crl_verifies(pki: Pki, world: dict[str, Issued], tmp_path: Path) -> None:
    snapshot = _latest_snapshot(pki)
    crls = sorted(snapshot.glob("crls/**/*.crl"))
    assert crls
    issuers = {
        x509.SubjectKeyIdentifier.from_public_key(c.public_key()).digest.hex()[:16]: c
        for c in x509.load_pem_x509_certificates((snapshot / "issuers.pem").read_bytes())
    }
    for crl in crls:
        issuer = tmp_path / "issuer.pem"
        issuer.write_bytes(issuers[crl.parent.name].public_bytes(serialization.Encoding.PEM))
        result = openssl(
            "crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(issuer), "-noout", "-verify"
        )
        assert "verify OK" in result.stderr + result.stdout


def _crl_pem(pki: Pki, issued: Issued, partition: str, tmp_path: Path) -> Path:
    kid = x509.SubjectKeyIdentifier.from_public_key(issued.issuer.public_key()).digest.hex()
    crl = _latest_snapshot(pki) / "crls" / issued.kind.slug / kid[:16] / f"{partition}.crl"
    out = tmp_path / f"{issued.kind.slug}-{partition}.crl.pem"
    openssl("crl", "-inform", "DER", "-in", str(crl), "-out", str(out))
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_openssl_crl_check(pki: Pki, world: dict[str, Issued], name: str, tmp_path: Path) -> None:
    issued = world[name]
    partition = "271004" if name == "other_city" else "131016"
    cert, issuer = issued.pem_files(tmp_path, name)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pki.root_file.read_bytes() + issuer.read_bytes())
    crl = _crl_pem(pki, issued, partition, tmp_path)
    result = openssl(
        "verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(crl), str(cert),
        check=False,
    )  # fmt: skip
    if EXPECTED[name][0] == va_pb2.CERT_STATUS_GOOD:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert "certificate revoked" in result.stdout + result.stderr


def test_crl_of_another_municipality_is_out_of_scope(
    pki: Pki, world: dict[str, Issued], tmp_path: Path
) -> None:
    issued = world["other_city"]  # partition 271004
    cert, issuer = issued.pem_files(tmp_path, "other")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pki.root_file.read_bytes() + issuer.read_bytes())
    wrong = _crl_pem(pki, issued, "131016", tmp_path)
    result = openssl(
        "verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(wrong), str(cert),
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "different CRL scope" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        (
            va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"")
            ),
            "serial",
        ),
        (
            va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x01" * 21)
            ),
            "serial",
        ),
        (
            va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x00")
            ),
            "positive",
        ),
        (
            va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_UNSPECIFIED, serial=b"\x01")
            ),
            "kind",
        ),
        (va_pb2.CertRef(certificate_der=b"\x30\x03garbage"), "DER"),
        (va_pb2.CertRef(), "no certificate"),
        (
            va_pb2.CertRef(
                cert_id=va_pb2.CertId(
                    hash_algorithm="md5", issuer_name_hash=b"x", issuer_key_hash=b"y", serial=b"1"
                )
            ),
            "hash algorithm",
        ),
    ],
)
def test_malformed_check_is_invalid_argument(
    pki: Pki, world: dict[str, Issued], ref: va_pb2.CertRef, fragment: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        check(pki, ref)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "")
    # The worker survived: the next request is answered.
    assert check(pki, by_serial(world["good"])).status == va_pb2.CERT_STATUS_GOOD


@pytest.mark.parametrize("der", [b"", b"\x30\x00", b"not DER at all", b"\x30\x82\xff\xff"])
def test_malformed_ocsp_request_is_malformed_request(
    pki: Pki, world: dict[str, Issued], der: bytes
) -> None:
    reply = pki.status_stub.Ocsp(va_pb2.OcspRequest(der=der), timeout=10)
    response = ocsp.load_der_ocsp_response(reply.der)
    assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_check_stream_keeps_order_and_reports_bad_items(pki: Pki, world: dict[str, Issued]) -> None:
    requests = [
        va_pb2.CheckRequest(cert=by_serial(world["good"])),
        va_pb2.CheckRequest(
            cert=va_pb2.CertRef(kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_SIGN))
        ),
        va_pb2.CheckRequest(cert=by_serial(world["revoked"])),
    ]
    replies = list(
        pki.status_stub.CheckStream(iter([va_pb2.CheckBatchRequest(requests=requests)] * 2))
    )
    assert len(replies) == 2
    for reply in replies:
        results = reply.results
        assert results[0].status.status == va_pb2.CERT_STATUS_GOOD
        assert results[1].WhichOneof("result") == "error"
        assert results[2].status.status == va_pb2.CERT_STATUS_REVOKED
