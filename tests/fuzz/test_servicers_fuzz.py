"""Every method of the responder's gRPC services, and its HTTP endpoint, under random input.

A real signer and responder (the `pki` fixture: SoftHSM2, LMDB, a worker process on
127.0.0.1) with a few real certificates published. Each method is called with
valid-but-random messages (`strategies.messages`, with real serials, certificates,
CertIDs and OCSP requests mixed in so the draws get past the first check), sent as
the bytes of such a message, sometimes with bytes appended that still parse (unknown
fields). The answer must be OK or a status code that says what was wrong: never
INTERNAL or UNKNOWN, which is what an unexpected exception in a servicer becomes.
Bytes that do not parse as the request type at all are another target's concern.

Over HTTP, random requests to the same responder must never get a 500.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st

from jpki_va.client._ocsp import issuer_hashes
from jpki_va.core.domain import CertKind, Role, serial_to_bytes
from jpki_va.protos import crl_pb2, mapping_pb2, record_pb2, signer_pb2, va_pb2, verifiers_pb2
from tests.fuzz.strategies import messages
from tests.fuzz.test_http_fuzz import HTTP_SEEDS, OCSP_SEEDS, _responses
from tests.support import ALL_ROLES_VERIFIER, Issued, Pki, register_verifier

pytestmark = pytest.mark.integration  # a real signer, responder and HSM

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
SERVICES = [
    va_pb2.DESCRIPTOR.services_by_name["StatusService"],
    mapping_pb2.DESCRIPTOR.services_by_name["MappingService"],
    record_pb2.DESCRIPTOR.services_by_name["RecordService"],
    crl_pb2.DESCRIPTOR.services_by_name["CrlService"],
    verifiers_pb2.DESCRIPTOR.services_by_name["VerifierTokenService"],
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
LIMITED = "fuzz-auth-only"  # a verifier with one role, so refusals are drawn too


def _authority_key_id(issued: Issued) -> bytes:
    extension = issued.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    key_id = extension.value.key_identifier
    assert key_id is not None
    return key_id


class World:
    """What the draws mix in: real certificates, CertIDs and OCSP requests."""

    def __init__(self, pki: Pki) -> None:
        register_verifier(pki, LIMITED, frozenset({Role.AUTH_VERIFIER}))
        card = pki.issue(CertKind.CARD_SIGN, resident_code="88800000001")
        issued: list[Issued] = [
            card,
            pki.issue(CertKind.CARD_AUTH, resident_code="88800000001"),
            pki.issue(CertKind.MOBILE_SIGN, resident_code="88800000001", card=card),
        ]
        pki.signer_stub.RecordConsent(
            signer_pb2.RecordConsentRequest(
                resident_code="88800000001", verifier=ALL_ROLES_VERIFIER, grant=True
            ),
            timeout=30,
        )
        pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=va_pb2.CERT_KIND_CARD_AUTH,
                serial=serial_to_bytes(issued[1].serial),
                cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            ),
            timeout=30,
        )
        pki.publish_and_wait()
        issuers = {i.issuer.subject.rfc4514_string(): i.issuer for i in issued}
        self.hints: dict[str, list[Any]] = {
            "serial": [serial_to_bytes(i.serial) for i in issued] + [b"", b"\x00", bytes(21)],
            "kind": [int(k) for k in CertKind],
            "to": [int(k) for k in CertKind],
            "kinds": [int(k) for k in CertKind],
            "certificate_der": [i.certificate.public_bytes(Encoding.DER) for i in issued],
            "hash_algorithm": ["sha1", "sha256", "SHA256", "md5", ""],
            "partition": ["131016", "000000"],
            "issuer_key_id": [_authority_key_id(i) for i in issued] + [b"", bytes(8)],
            "der": OCSP_SEEDS
            + [
                ocsp.OCSPRequestBuilder()
                .add_certificate(i.certificate, i.issuer, hashes.SHA1())
                .build()
                .public_bytes(Encoding.DER)
                for i in issued
            ],
            "since": [0, 1, 2**63 - 1],
            "number": [0, 1, 2**63 - 1],
        }
        for algorithm in ("sha1", "sha256"):
            for issuer in issuers.values():
                name_hash, key_hash = issuer_hashes(issuer, algorithm)
                self.hints.setdefault("issuer_name_hash", []).append(name_hash)
                self.hints.setdefault("issuer_key_hash", []).append(key_hash)
        self.channel = grpc.insecure_channel(pki.responder_address)
        assert pki.responder.http_port is not None
        self.http_port: int = pki.responder.http_port

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def world(pki: Pki) -> Iterator[World]:
    made = World(pki)
    try:
        yield made
    finally:
        made.close()


def _parses(cls: type[Message], data: bytes) -> bool:
    try:
        cls.FromString(data)
    except DecodeError:
        return False
    return True


def _payloads(cls: type[Message], hints: dict[str, list[Any]]) -> st.SearchStrategy[bytes]:
    """A random message's bytes, sometimes with more bytes after it that still parse."""

    def extend(data: bytes, extra: bytes) -> bytes:
        longer = data + extra
        return longer if _parses(cls, longer) else data

    serialized = messages(cls, hints).map(lambda m: m.SerializeToString())
    return st.one_of(serialized, st.builds(extend, serialized, st.binary(min_size=1, max_size=24)))


def _call(world: World, service: Any, method: Any, payloads: list[bytes], verifier: str | None):
    path = f"/{service.full_name}/{method.name}"
    metadata = () if verifier is None else (("x-jpki-verifier", verifier),)
    identity = bytes
    try:
        if method.client_streaming:
            call = world.channel.stream_stream(path, identity, identity)
            for _ in call(iter(payloads), timeout=10, metadata=metadata):
                pass
        elif method.server_streaming:
            stream = world.channel.unary_stream(path, identity, identity)
            # A watch waits for news: its first answer, or a short deadline, is enough.
            responses = stream(payloads[0], timeout=0.5, metadata=metadata)
            for count, _ in enumerate(responses):
                if count >= 2:
                    responses.cancel()  # type: ignore[no-untyped-call]  # untyped in the stubs
                    break
        else:
            world.channel.unary_unary(path, identity, identity)(
                payloads[0], timeout=10, metadata=metadata
            )
    except grpc.RpcError as error:
        code = error.code()
        assert code not in NEVER, f"{method.name}: {code} {error.details()}"
        if code not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            assert error.details(), f"{method.name}: {code} without a message"


_verifiers = st.sampled_from([None, ALL_ROLES_VERIFIER, LIMITED, "ghost"])


@pytest.mark.parametrize(("service", "method"), METHODS, ids=lambda v: getattr(v, "name", ""))
def test_valid_random_messages_never_fail_inside(world: World, service: Any, method: Any) -> None:
    cls = GetMessageClass(method.input_type)
    payloads = _payloads(cls, world.hints)
    batches = (
        st.lists(payloads, min_size=1, max_size=3)
        if method.client_streaming
        else st.lists(payloads, min_size=1, max_size=1)
    )
    # A watch is held open until its deadline: fewer of those.
    assert settings.default is not None
    examples = settings.default.max_examples
    if method.server_streaming and method.name == "WatchRevocations":
        examples = max(10, examples // 10)

    @settings(max_examples=examples)
    @given(batches, _verifiers)
    def check(sent: list[bytes], verifier: str | None) -> None:
        _call(world, service, method, sent, verifier)

    check()


def _http(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def _request(method: bytes, path: bytes, headers: list[bytes], body: bytes) -> bytes:
    head = b"%s %s HTTP/1.1\r\nHost: va\r\n" % (method, path)
    head += b"".join(h + b"\r\n" for h in headers)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@given(
    st.sampled_from([b"GET", b"POST", b"PUT"]),
    st.one_of(
        st.sampled_from([b"/", b"/ocsp", b"/crl/card-sign/0011223344556677/131016.crl"]),
        st.binary(min_size=1, max_size=40).map(lambda b: b"/" + b.hex().encode()),
        st.sampled_from(OCSP_SEEDS).map(lambda der: b"/ocsp/" + base64.urlsafe_b64encode(der)),
    ),
    st.lists(
        st.sampled_from(
            [
                b"Content-Type: application/ocsp-request",
                b"X-JPKI-Verifier: " + ALL_ROLES_VERIFIER.encode(),
                b"X-JPKI-Verifier: " + LIMITED.encode(),
                b"X-JPKI-Verifier: ghost",
                b'If-None-Match: "x", *',
            ]
        ),
        max_size=3,
    ),
    st.sampled_from(OCSP_SEEDS) | st.binary(max_size=120),
)
def test_the_responders_http_never_fails_inside(
    world: World, method: bytes, path: bytes, headers: list[bytes], body: bytes
) -> None:
    statuses = _responses(_http(world.http_port, _request(method, path, headers, body)))
    assert 500 not in statuses


def test_the_responders_http_answers_the_seeds(world: World) -> None:
    for seed in HTTP_SEEDS:
        assert 500 not in _responses(_http(world.http_port, seed))
