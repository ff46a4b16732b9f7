"""VaClient against a real gRPC server on 127.0.0.1 running a fake StatusService."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from jpki_va import client
from jpki_va.client import (
    CertIdRef,
    CertificateStatus,
    CertKind,
    ClientError,
    CrlReason,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    LossCause,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    Revocation,
    Status,
    Unauthenticated,
    Unavailable,
    VaClient,
    is_loopback_target,
)
from jpki_va.protos import va_pb2

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _only_request(service, method: str):
    requests = service.requests(method)
    assert len(requests) == 1, service.calls
    return requests[0]


# --- naming the certificate -------------------------------------------------------


def test_check_by_kind_and_serial(va, served):
    va.check(kind=CertKind.MOBILE_AUTH, serial=0x0123)
    request = _only_request(served.service, "Check")
    assert request.cert.WhichOneof("ref") == "kind_serial"
    assert request.cert.kind_serial.kind == va_pb2.CERT_KIND_MOBILE_AUTH
    assert request.cert.kind_serial.serial == b"\x01\x23"  # minimal unsigned big-endian
    assert not request.HasField("as_of")  # unset means "now" on the server


@pytest.mark.parametrize("form", ["object", "der", "pem"])
def test_check_by_certificate(va, served, pki, form):
    given = {
        "object": pki.leaf,
        "der": _der(pki.leaf),
        "pem": pki.leaf.public_bytes(serialization.Encoding.PEM),
    }[form]
    va.check(certificate=given)
    request = _only_request(served.service, "Check")
    assert request.cert.WhichOneof("ref") == "certificate_der"
    assert request.cert.certificate_der == _der(pki.leaf)


def test_check_by_cert_id(va, served, pki):
    ref = CertIdRef.for_issuer(pki.gen2.cert, pki.leaf.serial_number)
    va.check(cert_id=ref)
    request = _only_request(served.service, "Check")
    assert request.cert.WhichOneof("ref") == "cert_id"
    got = request.cert.cert_id
    # The same CertID cryptography computes for an OCSP request about the leaf.
    expected = (
        ocsp.OCSPRequestBuilder().add_certificate(pki.leaf, pki.gen2.cert, hashes.SHA1()).build()
    )
    assert got.hash_algorithm == "sha1"
    assert got.issuer_name_hash == expected.issuer_name_hash
    assert got.issuer_key_hash == expected.issuer_key_hash
    assert int.from_bytes(got.serial, "big") == expected.serial_number


def test_as_of_is_sent_in_utc(va, served):
    jst = timezone(timedelta(hours=9))
    va.check(kind=CertKind.CARD_SIGN, serial=5, as_of=datetime(2026, 4, 1, 9, 0, tzinfo=jst))
    request = _only_request(served.service, "Check")
    assert request.as_of.ToDatetime(tzinfo=UTC) == datetime(2026, 4, 1, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"kind": CertKind.CARD_SIGN},
        {"serial": 5},
        {"kind": CertKind.CARD_SIGN, "serial": 5, "certificate": b"\x30"},
        {"certificate": b"\x30", "cert_id": CertIdRef(b"a", b"b", 5)},
        {"kind": CertKind.CARD_SIGN, "serial": 0},
        {"kind": CertKind.CARD_SIGN, "serial": -1},
        {"kind": CertKind.CARD_SIGN, "serial": 1 << 160},  # 21 octets
        {"kind": CertKind.CARD_SIGN, "serial": 5, "as_of": datetime(2026, 1, 1)},  # naive
    ],
)
def test_bad_naming_is_refused_locally(va, served, kwargs):
    with pytest.raises(ValueError):
        va.check(**kwargs)
    assert served.service.calls == []


# --- answers ---------------------------------------------------------------------


def test_every_field_is_mapped(va, pki):
    answer = va.check(kind=CertKind.CARD_SIGN, serial=pki.leaf.serial_number)
    assert answer == CertificateStatus(
        kind=CertKind.CARD_SIGN,
        serial=0x1A2B3C,
        status=Status.REVOKED,
        not_before=NOW - timedelta(days=30),
        not_after=NOW + timedelta(days=365),
        revocation=Revocation(
            time=NOW - timedelta(days=1),
            cause=LossCause.HOLDER_REQUEST,
            reason=CrlReason.KEY_COMPROMISE,
        ),
        partition="131016",
        issuer_key_id=pki.gen2.key_id,
        as_of=NOW,
        index_sequence=42,
    )
    assert answer.not_before is not None
    assert answer.not_before.tzinfo is not None


def test_unset_fields_are_none(va, served):
    served.service.check_answer = va_pb2.CertificateStatus(
        kind=va_pb2.CERT_KIND_CARD_AUTH, serial=b"\x07", status=va_pb2.CERT_STATUS_UNKNOWN
    )
    answer = va.check(kind=CertKind.CARD_AUTH, serial=7)
    assert answer.status is Status.UNKNOWN
    assert answer.revocation is None
    assert answer.not_before is None
    assert answer.not_after is None
    assert answer.as_of is None
    assert answer.issuer_key_id == b""


def test_unknown_answer_without_kind(va, served):
    # A CertID naming an issuer the server does not answer for has no kind.
    served.service.check_answer = va_pb2.CertificateStatus(
        serial=b"\x07", status=va_pb2.CERT_STATUS_UNKNOWN
    )
    answer = va.check(cert_id=CertIdRef(b"\x00" * 20, b"\x00" * 20, 7))
    assert (answer.kind, answer.status) == (None, Status.UNKNOWN)
    assert answer.to_json()["kind"] is None


def test_to_json(va, pki):
    answer = va.check(kind=CertKind.CARD_SIGN, serial=pki.leaf.serial_number)
    assert answer.to_json() == {
        "kind": "CARD_SIGN",
        "serial": "1A2B3C",
        "status": "REVOKED",
        "not_before": "2026-10-27T12:00:00Z",
        "not_after": "2027-11-26T12:00:00Z",
        "revocation": {
            "time": "2026-11-25T12:00:00Z",
            "cause": "HOLDER_REQUEST",
            "reason": "KEY_COMPROMISE",
        },
        "partition": "131016",
        "issuer_key_id": pki.gen2.key_id.hex().upper(),
        "as_of": "2026-11-26T12:00:00Z",
        "index_sequence": 42,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"status": 0},  # UNSPECIFIED
        {"status": 99},  # a status this client does not know
        {"kind": 99},
        {"serial": b""},
    ],
)
def test_malformed_answer_is_a_protocol_error(va, served, bad):
    answer = va_pb2.CertificateStatus(
        kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x05", status=va_pb2.CERT_STATUS_GOOD
    )
    for name, value in bad.items():
        setattr(answer, name, value)
    served.service.check_answer = answer
    with pytest.raises(ProtocolError) as caught:
        va.check(kind=CertKind.CARD_SIGN, serial=5)
    assert isinstance(caught.value, InternalError)


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNIMPLEMENTED, ClientError),
    ],
)
@pytest.mark.parametrize("method", ["check", "ocsp", "issuers"])
def test_status_codes_map_to_exceptions(va, served, code, cls, method):
    served.service.abort = (code, "canned refusal")
    calls: dict[str, Callable[[], object]] = {
        "check": lambda: va.check(kind=CertKind.CARD_SIGN, serial=5),
        "ocsp": lambda: va.ocsp(b"\x30\x00"),
        "issuers": va.issuers,
    }
    call = calls[method]
    with pytest.raises(ClientError) as caught:
        call()
    assert type(caught.value) is cls
    assert caught.value.code is code
    assert caught.value.details == "canned refusal"
    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_per_call_deadline(va, served):
    served.service.delay = 5.0
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        va.check(kind=CertKind.CARD_SIGN, serial=5, timeout=0.2)
    assert time.monotonic() - started < 2.0
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_client_default_deadline(served):
    served.service.delay = 5.0
    with VaClient(served.target, insecure=True, timeout=0.2) as va, pytest.raises(DeadlineExceeded):
        va.issuers()


def test_unreachable_server_is_unavailable(unused_port):
    with (
        VaClient(f"127.0.0.1:{unused_port}", insecure=True, timeout=2) as va,
        pytest.raises(Unavailable),
    ):
        va.check(kind=CertKind.CARD_SIGN, serial=5)


# --- channel construction ----------------------------------------------------------


def test_plaintext_needs_explicit_insecure():
    with pytest.raises(ValueError, match="plaintext"):
        VaClient("127.0.0.1:50051")


@pytest.mark.parametrize("target", ["10.1.2.3:443", "va.example.jp:443", "dns:///va.example:1"])
def test_plaintext_only_to_loopback(target):
    with pytest.raises(ValueError, match="loopback"):
        VaClient(target, insecure=True)


def test_credentials_and_insecure_conflict():
    with pytest.raises(ValueError):
        VaClient("localhost:1", credentials=grpc.ssl_channel_credentials(), insecure=True)


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.1:1", True),
        ("localhost:443", True),
        ("[::1]:443", True),
        ("ipv4:127.0.0.1:5", True),
        ("dns:///localhost:5", True),
        ("unix:/run/va.sock", True),
        ("ipv4:127.0.0.1:5,127.0.0.2:5", True),
        ("ipv4:127.0.0.1:5,192.0.2.1:5", False),
        ("192.0.2.1:443", False),
        ("[2001:db8::1]:443", False),
        ("localhost.example.jp:443", False),
        ("va.example.jp", False),
    ],
)
def test_is_loopback_target(target, loopback):
    assert is_loopback_target(target) is loopback


def test_mtls_channel(served_mtls, pki):
    def pem(obj: x509.Certificate) -> bytes:
        return obj.public_bytes(serialization.Encoding.PEM)

    key = pki.client_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    creds = grpc.ssl_channel_credentials(pem(pki.root.cert), key, pem(pki.client_cert))
    with VaClient(served_mtls.target, credentials=creds) as va:
        assert va.check(kind=CertKind.CARD_SIGN, serial=5).status is Status.REVOKED


# --- issuers and OCSP ----------------------------------------------------------------


def test_issuers(va, pki):
    issuers = va.issuers()
    assert issuers.root == pki.root.cert
    assert len(issuers) == 4
    root, gen1, gen2, ec_ca = issuers
    assert root.kind is None
    assert (gen1.kind, gen1.active, gen1.certificate) == (CertKind.CARD_SIGN, False, pki.gen1.cert)
    assert (gen2.kind, gen2.active) == (CertKind.CARD_SIGN, True)
    assert ec_ca.kind is CertKind.MOBILE_SIGN
    assert issuers.find(pki.gen1.key_id) is gen1
    assert issuers.find(b"nope") is None


def test_issuer_for_certificate_is_by_key_not_name(va, pki):
    issuers = va.issuers()
    # gen1 and gen2 share one DN; only the authority key identifier tells them apart.
    assert pki.gen1.cert.subject == pki.gen2.cert.subject
    found = issuers.for_certificate(pki.leaf)
    assert found is not None
    assert found.key_id == pki.gen2.key_id
    assert issuers.for_certificate(pki.ec_leaf).certificate == pki.ec_ca.cert


def test_ocsp_passes_bytes_through(va, served):
    assert va.ocsp(b"request bytes") == served.service.ocsp_answer
    assert _only_request(served.service, "Ocsp").der == b"request bytes"


def _sent_ocsp_request(service) -> ocsp.OCSPRequest:
    return ocsp.load_der_ocsp_request(_only_request(service, "Ocsp").der)


def _expected_cert_id(cert, issuer) -> ocsp.OCSPRequest:
    return ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()


def _same_cert_id(got: ocsp.OCSPRequest, expected: ocsp.OCSPRequest) -> bool:
    return (
        got.issuer_name_hash == expected.issuer_name_hash
        and got.issuer_key_hash == expected.issuer_key_hash
        and got.serial_number == expected.serial_number
        and isinstance(got.hash_algorithm, hashes.SHA1)
    )


def test_ocsp_for_certificate_finds_issuer_by_aki(va, served, pki):
    result = va.ocsp_for(certificate=pki.leaf)
    assert result.der == served.service.ocsp_answer
    assert result.response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert result.response.serial_number == pki.leaf.serial_number
    sent = _sent_ocsp_request(served.service)
    assert result.request_der == _only_request(served.service, "Ocsp").der
    assert _same_cert_id(sent, _expected_cert_id(pki.leaf, pki.gen2.cert))
    assert sent.issuer_key_hash != _expected_cert_id(pki.leaf, pki.gen1.cert).issuer_key_hash


def test_ocsp_for_certificate_with_given_issuer(va, served, pki):
    va.ocsp_for(certificate=_der(pki.leaf), issuer=pki.gen2.cert)
    assert served.service.requests("ListIssuers") == []
    assert _same_cert_id(
        _sent_ocsp_request(served.service), _expected_cert_id(pki.leaf, pki.gen2.cert)
    )


@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_ocsp_for_kind_and_serial(va, served, pki, which):
    leaf, issuer, kind = {
        "rsa": (pki.leaf, pki.gen2, CertKind.CARD_SIGN),
        "ec": (pki.ec_leaf, pki.ec_ca, CertKind.MOBILE_SIGN),
    }[which]
    served.service.check_answer.issuer_key_id = issuer.key_id
    va.ocsp_for(kind=kind, serial=leaf.serial_number)
    check = _only_request(served.service, "Check")
    assert check.cert.kind_serial.kind == kind
    assert [name for name, _ in served.service.calls] == ["Check", "ListIssuers", "Ocsp"]
    # By-hash CertID built here equals cryptography's own from the certificate.
    assert _same_cert_id(_sent_ocsp_request(served.service), _expected_cert_id(leaf, issuer.cert))


def test_ocsp_for_unknown_issuer(va, served, pki):
    served.service.check_answer.issuer_key_id = b"\x01" * 20
    with pytest.raises(LookupError):
        va.ocsp_for(kind=CertKind.CARD_SIGN, serial=pki.leaf.serial_number)
    served.service.issuers_answer = va_pb2.ListIssuersResponse()
    with pytest.raises(LookupError):
        va.ocsp_for(certificate=pki.leaf)
    assert served.service.requests("Ocsp") == []


def test_ocsp_for_garbage_answer(va, served, pki):
    served.service.ocsp_answer = b"not der"
    with pytest.raises(ProtocolError):
        va.ocsp_for(certificate=pki.leaf, issuer=pki.gen2.cert)


def test_ocsp_for_needs_one_name(va, pki):
    with pytest.raises(ValueError):
        va.ocsp_for()
    with pytest.raises(ValueError):
        va.ocsp_for(certificate=pki.leaf, kind=CertKind.CARD_SIGN, serial=1)


def test_public_api_is_curated():
    assert set(client.__all__) >= {
        "VaClient",
        "CertificateStatus",
        "Revocation",
        "IssuerInfo",
        "IssuerSet",
        "OcspResult",
        "CertIdRef",
        "ClientError",
        "CertKind",
        "Status",
        "LossCause",
        "CrlReason",
    }
    assert all(not name.startswith("_") for name in client.__all__)
    assert all(hasattr(client, name) for name in client.__all__)
