"""Fixtures for the client tests: a software PKI and a real gRPC server on 127.0.0.1.

The server runs a small fake StatusService that returns canned answers and records
what it was asked: these are unit tests of the client, the responder is tested end to
end elsewhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import timestamp_pb2

from jpki_va.client import CertKind, VaClient
from jpki_va.core.domain import serial_to_bytes
from jpki_va.protos import va_pb2, va_pb2_grpc
from tests.support.ports import free_port

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ISSUER_DN = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "JPKI-VA Test"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Test Signing CA"),
    ]
)

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Ca:
    key: Key
    cert: x509.Certificate

    @property
    def key_id(self) -> bytes:
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return ski.value.digest


@dataclass(frozen=True)
class Pki:
    root: Ca
    gen1: Ca  # an older generation of the signing CA: same DN as gen2, other key
    gen2: Ca
    ec_ca: Ca  # an EC issuer, to cover the EC key-hash path
    leaf: x509.Certificate  # CARD_SIGN certificate issued by gen2
    ec_leaf: x509.Certificate  # MOBILE_SIGN certificate issued by ec_ca
    server_key: Key  # TLS server (localhost) and verifier client, both under root
    server_cert: x509.Certificate
    client_key: Key
    client_cert: x509.Certificate


def _cert(
    subject: x509.Name,
    key: Key,
    issuer: Ca | None,
    serial: int,
    *,
    ca: bool,
    extra: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:
    signer_key = key if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    for ext in extra or []:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="session")
def pki() -> Pki:
    def rsa_key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    root_key = rsa_key()
    root = Ca(root_key, _cert(_name("JPKI-VA Test Root"), root_key, None, 1, ca=True))
    gen1_key, gen2_key = rsa_key(), rsa_key()
    gen1 = Ca(gen1_key, _cert(ISSUER_DN, gen1_key, root, 2, ca=True))
    gen2 = Ca(gen2_key, _cert(ISSUER_DN, gen2_key, root, 3, ca=True))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_ca = Ca(ec_key, _cert(_name("Test Mobile CA"), ec_key, root, 4, ca=True))
    holder_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(_name("holder"), holder_key, gen2, 0x1A2B3C, ca=False)
    ec_leaf = _cert(_name("holder mobile"), holder_key, ec_ca, 0x77, ca=False)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _cert(
        _name("localhost"),
        server_key,
        root,
        5,
        ca=False,
        extra=[
            x509.SubjectAlternativeName([x509.DNSName("localhost")]),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _cert(
        _name("verifier"),
        client_key,
        root,
        6,
        ca=False,
        extra=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
    )
    return Pki(
        root, gen1, gen2, ec_ca, leaf, ec_leaf, server_key, server_cert, client_key, client_cert
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def revoked_status(pki: Pki) -> va_pb2.CertificateStatus:
    """A fully populated answer: every field of CertificateStatus set."""
    return va_pb2.CertificateStatus(
        kind=va_pb2.CERT_KIND_CARD_SIGN,
        serial=serial_to_bytes(pki.leaf.serial_number),
        status=va_pb2.CERT_STATUS_REVOKED,
        not_before=stamp(NOW - timedelta(days=30)),
        not_after=stamp(NOW + timedelta(days=365)),
        revocation=va_pb2.Revocation(
            time=stamp(NOW - timedelta(days=1)),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            reason=va_pb2.CRL_REASON_KEY_COMPROMISE,
        ),
        partition="131016",
        issuer_key_id=pki.gen2.key_id,
        as_of=stamp(NOW),
        index_sequence=42,
    )


def ocsp_response_der(pki: Pki, cert: x509.Certificate, issuer: Ca) -> bytes:
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=NOW,
            next_update=NOW + timedelta(hours=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
        .sign(issuer.key, hashes.SHA256())
    )
    return response.public_bytes(serialization.Encoding.DER)


def issuer_list(pki: Pki) -> va_pb2.ListIssuersResponse:
    def issuer(kind: int, ca: Ca, active: bool) -> va_pb2.Issuer:
        return va_pb2.Issuer(
            kind=va_pb2.CertKind.ValueType(kind),
            key_id=ca.key_id,
            certificate_der=der(ca.cert),
            active=active,
        )

    return va_pb2.ListIssuersResponse(
        root_certificate_der=der(pki.root.cert),
        issuers=[
            issuer(0, pki.root, True),
            issuer(CertKind.CARD_SIGN, pki.gen1, False),
            issuer(CertKind.CARD_SIGN, pki.gen2, True),
            issuer(CertKind.MOBILE_SIGN, pki.ec_ca, True),
        ],
    )


@dataclass
class FakeStatusService(va_pb2_grpc.StatusServiceServicer):
    """Canned answers; ``calls`` records (method, request) in arrival order."""

    check_answer: va_pb2.CertificateStatus
    ocsp_answer: bytes
    issuers_answer: va_pb2.ListIssuersResponse
    abort: tuple[grpc.StatusCode, str] | None = None
    delay: float = 0.0
    calls: list[tuple[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append((method, request))
        # Sleep in steps so a cancelled call (client deadline) frees the worker quickly.
        until = time.monotonic() + self.delay
        while time.monotonic() < until and context.is_active():
            time.sleep(0.01)
        if self.abort is not None:
            context.abort(*self.abort)

    def requests(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]

    def Check(self, request: va_pb2.CheckRequest, context: Any) -> va_pb2.CheckResponse:
        self._enter("Check", request, context)
        return va_pb2.CheckResponse(status=self.check_answer)

    def Ocsp(self, request: va_pb2.OcspRequest, context: Any) -> va_pb2.OcspResponse:
        self._enter("Ocsp", request, context)
        return va_pb2.OcspResponse(der=self.ocsp_answer)

    def ListIssuers(
        self, request: va_pb2.ListIssuersRequest, context: Any
    ) -> va_pb2.ListIssuersResponse:
        self._enter("ListIssuers", request, context)
        return self.issuers_answer

    def CheckStream(self, request_iterator: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by the client")


@dataclass
class Served:
    service: FakeStatusService
    target: str


def _start(service: FakeStatusService, credentials: grpc.ServerCredentials | None, host: str):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    va_pb2_grpc.add_StatusServiceServicer_to_server(service, server)
    if credentials is None:
        port = server.add_insecure_port(f"{host}:0")
    else:
        port = server.add_secure_port(f"{host}:0", credentials)
    server.start()
    return server, port


@pytest.fixture
def service(pki: Pki) -> FakeStatusService:
    return FakeStatusService(
        check_answer=revoked_status(pki),
        ocsp_answer=ocsp_response_der(pki, pki.leaf, pki.gen2),
        issuers_answer=issuer_list(pki),
    )


@pytest.fixture
def served(service: FakeStatusService) -> Iterator[Served]:
    """The fake service on a plaintext port of 127.0.0.1."""
    server, port = _start(service, None, "127.0.0.1")
    yield Served(service, f"127.0.0.1:{port}")
    server.stop(None).wait()


@pytest.fixture
def served_mtls(service: FakeStatusService, pki: Pki) -> Iterator[Served]:
    """The fake service behind TLS that requires a client certificate under the test root."""
    credentials = grpc.ssl_server_credentials(
        [(key_pem(pki.server_key), pem(pki.server_cert))],
        root_certificates=pem(pki.root.cert),
        require_client_auth=True,
    )
    server, port = _start(service, credentials, "127.0.0.1")
    yield Served(service, f"localhost:{port}")
    server.stop(None).wait()


@pytest.fixture
def va(served: Served) -> Iterator[VaClient]:
    with VaClient(served.target, insecure=True) as client:
        yield client


@pytest.fixture
def unused_port() -> int:
    """A loopback port nobody listens on (free, and this worker's own)."""
    return free_port()
