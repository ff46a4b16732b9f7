"""CrlService: current and retained CRL files, streamed in chunks; judged by openssl."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.domain import CertKind
from jpki_va.protos import crl_pb2, crl_pb2_grpc, signer_pb2, va_pb2
from jpki_va.server.responder.crl_archive import CrlArchive, CrlNotFound, archived
from tests.support import Issued, Pki, openssl, wait_for

MUNICIPALITY = "131016"


@pytest.fixture(scope="module")
def crls(pki: Pki) -> crl_pb2_grpc.CrlServiceStub:
    return crl_pb2_grpc.CrlServiceStub(grpc.insecure_channel(pki.responder_address))


def _get(stub: crl_pb2_grpc.CrlServiceStub, **fields: object) -> tuple[crl_pb2.CrlInfo, bytes]:
    return _get_request(stub, crl_pb2.GetCrlRequest(**fields))  # type: ignore[arg-type]


def _get_request(
    stub: crl_pb2_grpc.CrlServiceStub, request: crl_pb2.GetCrlRequest
) -> tuple[crl_pb2.CrlInfo, bytes]:
    chunks = list(stub.GetCrl(request, timeout=10))
    assert chunks and chunks[0].HasField("info")
    assert all(not c.HasField("info") for c in chunks[1:])
    return chunks[0].info, b"".join(c.data for c in chunks)


def test_current_retained_and_as_of(
    pki: Pki, crls: crl_pb2_grpc.CrlServiceStub, tmp_path: Path
) -> None:
    issued: Issued = pki.issue(CertKind.CARD_SIGN, municipality=MUNICIPALITY)
    pki.publish_and_wait()
    first, first_der = _get(crls, kind=va_pb2.CERT_KIND_CARD_SIGN, partition=MUNICIPALITY)
    assert first.current and first.size == len(first_der)
    assert first.sha256 == hashlib.sha256(first_der).digest()
    crl = x509.load_der_x509_crl(first_der)
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is None
    # The same bytes the signer published, and openssl verifies them with the issuer.
    issuer_pem = tmp_path / "issuer.pem"
    issuer_pem.write_bytes(issued.issuer.public_bytes(Encoding.PEM))
    crl_file = tmp_path / "first.crl"
    crl_file.write_bytes(first_der)
    verified = openssl("crl", "-inform", "DER", "-in", str(crl_file), "-CAfile", str(issuer_pem),
                       "-noout", "-verify")  # fmt: skip
    assert "verify OK" in verified.stderr

    # CRL times have whole seconds: let the next CRL be made in a later second.
    made = first.this_update.ToDatetime(tzinfo=UTC)
    wait_for(lambda: datetime.now(UTC) - made > timedelta(seconds=1), "the next second", 5)
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_SIGN,
            serial=issued.serial.to_bytes(8, "big"),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )
    pki.publish_and_wait()
    second, second_der = _get(crls, kind=va_pb2.CERT_KIND_CARD_SIGN, partition=MUNICIPALITY)
    assert second.current and second.number > first.number
    revoked = x509.load_der_x509_crl(second_der).get_revoked_certificate_by_serial_number(
        issued.serial
    )
    assert revoked is not None
    # The earlier file is retained: by number, and as the one in force at its time.
    by_number, der = _get(
        crls, kind=va_pb2.CERT_KIND_CARD_SIGN, partition=MUNICIPALITY, number=first.number
    )
    assert der == first_der and not by_number.current
    at = crl_pb2.GetCrlRequest(kind=va_pb2.CERT_KIND_CARD_SIGN, partition=MUNICIPALITY)
    at.as_of.CopyFrom(first.this_update)
    as_of, _ = _get_request(crls, at)
    assert as_of.number == first.number
    listed = crls.ListCrls(
        crl_pb2.ListCrlsRequest(kind=va_pb2.CERT_KIND_CARD_SIGN, partition=MUNICIPALITY)
    ).crls
    numbers = {c.number for c in listed}
    assert {first.number, second.number} <= numbers
    assert [c.number for c in listed if c.current] == [second.number]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"partition": MUNICIPALITY}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"kind": 9, "partition": MUNICIPALITY}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"kind": 1, "partition": "13101"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"kind": 1, "partition": "999999"}, grpc.StatusCode.NOT_FOUND),
        ({"kind": 1, "partition": MUNICIPALITY, "number": 10**9}, grpc.StatusCode.NOT_FOUND),
        (
            {"kind": 1, "partition": MUNICIPALITY, "issuer_key_id": b"\1" * 20},
            grpc.StatusCode.NOT_FOUND,
        ),
    ],
)
def test_bad_requests(
    pki: Pki, crls: crl_pb2_grpc.CrlServiceStub, fields: dict[str, object], code: grpc.StatusCode
) -> None:
    pki.publish_and_wait()
    with pytest.raises(grpc.RpcError) as info:
        _get(crls, **fields)
    assert info.value.code() is code
    assert info.value.details()


def test_old_time_before_any_retained_crl(pki: Pki, crls: crl_pb2_grpc.CrlServiceStub) -> None:
    pki.publish_and_wait()
    request = crl_pb2.GetCrlRequest(kind=va_pb2.CERT_KIND_CARD_SIGN, partition=MUNICIPALITY)
    request.as_of.FromDatetime(datetime(2000, 1, 1, tzinfo=UTC))
    with pytest.raises(grpc.RpcError) as info:
        list(crls.GetCrl(request, timeout=10))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_archive_prunes_past_retention_but_keeps_the_newest(tmp_path: Path) -> None:
    archive = CrlArchive(tmp_path / "crls")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    kid = b"\x07" * 20
    try:
        archive.add(
            archived(
                CertKind.CARD_AUTH,
                kid,
                "131016",
                n,
                start + timedelta(days=n),
                start + timedelta(days=n + 1),
                f"crl {n}".encode(),
            )
            for n in (1, 2, 3)
        )
        assert archive.prune(start + timedelta(days=40), timedelta(days=30)) == 2
        assert [c.number for c in archive.list(CertKind.CARD_AUTH)] == [3]
        with pytest.raises(CrlNotFound):
            archive.find(CertKind.CARD_AUTH, kid, "131016", number=1)
        kept = archive.find(CertKind.CARD_AUTH, kid, "131016", as_of=start + timedelta(days=90))
        assert archive.der(kept) == b"crl 3"
    finally:
        archive.close()
