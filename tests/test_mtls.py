"""Entitlements over real mTLS on 127.0.0.1: every row of DESIGN §7 the responder serves.

Allowed roles get answers; the others get PERMISSION_DENIED naming the missing role.
Signing records and mappings are served by other services; their rows are covered by
the matrix unit tests (tests/test_entitlements.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from protos import crl_pb2, crl_pb2_grpc, va_pb2, va_pb2_grpc, verifiers_pb2
from server.config import TlsFiles
from server.domain import CertKind, Provision, Role
from server.ledger import JST, Ledger, year_bounds
from tests.support import ExtraResponder, Issued, Pki, start_responder, wait_for
from tests.tls import TlsCa, TlsIdentity

REPO = Path(__file__).resolve().parent.parent

S, G, A, X = (
    Role.SIGNING_VERIFIER,
    Role.GROUP_SIGNING_VERIFIER,
    Role.AUTH_VERIFIER,
    Role.SPECIFIC_AUTH_VERIFIER,
)
VERIFIERS = {
    "v-sign": {S},
    "v-group": {G},
    "v-auth": {A},
    "v-specific": {X},
    "v-sign-auth": {S, A},
}
MUNICIPALITY = "131016"
COUNTED = "v-counted"  # makes only the calls the counting test makes


@dataclass
class World:
    pki: Pki
    ca: TlsCa
    responder: ExtraResponder
    idents: dict[str, TlsIdentity]
    certs: dict[CertKind, Issued]

    def stub(self, who: str | None) -> va_pb2_grpc.StatusServiceStub:
        return va_pb2_grpc.StatusServiceStub(self.channel(who))

    def crl_stub(self, who: str) -> crl_pb2_grpc.CrlServiceStub:
        return crl_pb2_grpc.CrlServiceStub(self.channel(who))

    def channel(self, who: str | None) -> grpc.Channel:
        creds = self.ca.channel_credentials(None if who is None else self.idents[who])
        channel = grpc.secure_channel(self.responder.address, creds)
        self._channels.append(channel)
        return channel

    _channels: list[grpc.Channel]


@pytest.fixture(scope="module")
def world(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("mtls")
    ca = TlsCa(base / "tls")
    server = ca.issue("responder", server=True)
    idents = {name: ca.issue(name) for name in [*VERIFIERS, COUNTED, "v-stranger"]}
    for name, roles in [*VERIFIERS.items(), (COUNTED, {S, A})]:
        pki.signer_stub.AddVerifier(
            verifiers_pb2.AddVerifierRequest(
                id=name,
                roles=[int(r) for r in roles],  # type: ignore[misc]
                client_certificate_der=[idents[name].der],
                agreement="AG-1" if X in roles else "",
            ),
            timeout=30,
        )
    card_sign = pki.issue(CertKind.CARD_SIGN, resident_code="70000000001")
    card_auth = pki.issue(CertKind.CARD_AUTH, resident_code="70000000001")
    certs = {
        CertKind.CARD_SIGN: card_sign,
        CertKind.CARD_AUTH: card_auth,
        CertKind.MOBILE_SIGN: pki.issue(
            CertKind.MOBILE_SIGN, resident_code="70000000001", card=card_sign
        ),
        CertKind.MOBILE_AUTH: pki.issue(
            CertKind.MOBILE_AUTH, resident_code="70000000001", card=card_sign
        ),
    }
    sequence = pki.publish_and_wait()
    responder = start_responder(
        pki,
        base / "state",
        tls=TlsFiles(server.cert, server.key, ca.cert_file),
        insecure_loopback=False,
    )
    world = World(pki, ca, responder, idents, certs, [])
    try:
        stub = world.stub("v-sign")

        def served() -> bool:
            try:
                reply = stub.Check(_by_serial(certs[CertKind.CARD_SIGN]), timeout=5)
            except grpc.RpcError:
                return False
            return reply.status.index_sequence >= sequence

        wait_for(served, "the TLS responder to serve the snapshot")
        yield world
    finally:
        for channel in world._channels:
            channel.close()
        responder.close()


def _by_serial(issued: Issued) -> va_pb2.CheckRequest:
    return va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=int(issued.kind),  # type: ignore[arg-type]
                serial=issued.serial.to_bytes(8, "big"),
            )
        )
    )


def _status_allowed(roles: set[Role], kind: CertKind) -> bool:
    return bool(roles & {S, G}) if kind.is_signing else A in roles


CASES = [(who, kind) for who in VERIFIERS for kind in CertKind]


@pytest.mark.parametrize(("who", "kind"), CASES, ids=[f"{w}-{k.slug}" for w, k in CASES])
def test_status_by_role(world: World, who: str, kind: CertKind) -> None:
    stub = world.stub(who)
    request = _by_serial(world.certs[kind])
    if _status_allowed(VERIFIERS[who], kind):
        reply = stub.Check(request, timeout=10)
        assert reply.status.status == va_pb2.CERT_STATUS_GOOD
    else:
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(request, timeout=10)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        missing = "SIGNING_VERIFIER" if kind.is_signing else "AUTH_VERIFIER"
        assert missing in (info.value.details() or "")
        assert who in (info.value.details() or "")


@pytest.mark.parametrize(("who", "kind"), CASES, ids=[f"{w}-{k.slug}" for w, k in CASES])
def test_ocsp_kind_comes_from_the_certid_issuer(world: World, who: str, kind: CertKind) -> None:
    issued = world.certs[kind]
    der = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, issued.issuer, hashes.SHA1())
        .build()
        .public_bytes(Encoding.DER)
    )
    stub = world.stub(who)
    if _status_allowed(VERIFIERS[who], kind):
        reply = stub.Ocsp(va_pb2.OcspRequest(der=der), timeout=10)
        response = ocsp.load_der_ocsp_response(reply.der)
        assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    else:
        with pytest.raises(grpc.RpcError) as info:
            stub.Ocsp(va_pb2.OcspRequest(der=der), timeout=10)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(("who", "kind"), CASES, ids=[f"{w}-{k.slug}" for w, k in CASES])
def test_crl_files_by_role(world: World, who: str, kind: CertKind) -> None:
    stub = world.crl_stub(who)
    request = crl_pb2.GetCrlRequest(kind=int(kind), partition=MUNICIPALITY)  # type: ignore[arg-type]
    if _status_allowed(VERIFIERS[who], kind):
        chunks = list(stub.GetCrl(request, timeout=10))
        assert chunks[0].info.kind == int(kind)
        assert chunks[0].info.current
        assert sum(len(c.data) for c in chunks) == chunks[0].info.size
    else:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.GetCrl(request, timeout=10))
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_list_crls_shows_only_entitled_kinds(world: World) -> None:
    kinds = {c.kind for c in world.crl_stub("v-auth").ListCrls(crl_pb2.ListCrlsRequest()).crls}
    assert kinds == {va_pb2.CERT_KIND_CARD_AUTH, va_pb2.CERT_KIND_MOBILE_AUTH}
    with pytest.raises(grpc.RpcError) as info:
        world.crl_stub("v-specific").ListCrls(crl_pb2.ListCrlsRequest(), timeout=10)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_batch_mixes_answers_and_refusals(world: World) -> None:
    stub = world.stub("v-sign")
    batch = va_pb2.CheckBatchRequest(
        requests=[
            _by_serial(world.certs[CertKind.CARD_SIGN]),
            _by_serial(world.certs[CertKind.CARD_AUTH]),
        ]
    )
    (reply,) = list(stub.CheckStream(iter([batch]), timeout=10))
    assert reply.results[0].status.status == va_pb2.CERT_STATUS_GOOD
    assert reply.results[1].error.startswith("PERMISSION_DENIED")
    assert "AUTH_VERIFIER" in reply.results[1].error


def test_list_issuers_needs_a_registered_verifier(world: World) -> None:
    for who in VERIFIERS:
        assert world.stub(who).ListIssuers(va_pb2.ListIssuersRequest(), timeout=10).issuers
    with pytest.raises(grpc.RpcError) as info:
        world.stub("v-stranger").ListIssuers(va_pb2.ListIssuersRequest(), timeout=10)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "not a registered verifier" in (info.value.details() or "")


def test_no_client_certificate_no_connection(world: World) -> None:
    with pytest.raises(grpc.RpcError) as info:
        world.stub(None).ListIssuers(va_pb2.ListIssuersRequest(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_the_demo_header_is_ignored_over_tls(world: World) -> None:
    stub = world.stub("v-sign")
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(
            _by_serial(world.certs[CertKind.CARD_AUTH]),
            timeout=10,
            metadata=(("x-jpki-verifier", "v-auth"),),
        )
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_provisions_are_counted_by_kind_and_verifier(world: World, tmp_path: Path) -> None:
    stub, crls = world.stub(COUNTED), world.crl_stub(COUNTED)
    for _ in range(3):
        stub.Check(_by_serial(world.certs[CertKind.MOBILE_SIGN]), timeout=10)
    for _ in range(2):
        stub.Check(_by_serial(world.certs[CertKind.MOBILE_AUTH]), timeout=10)
    list(
        crls.GetCrl(crl_pb2.GetCrlRequest(kind=va_pb2.CERT_KIND_CARD_AUTH, partition=MUNICIPALITY))
    )
    with pytest.raises(grpc.RpcError):  # refused: not counted
        list(world.crl_stub("v-group").GetCrl(
            crl_pb2.GetCrlRequest(kind=va_pb2.CERT_KIND_CARD_AUTH, partition=MUNICIPALITY)
        ))  # fmt: skip
    ledger_dir = world.responder.responder.config.ledger_dir
    year = datetime.now(JST).year
    ledger = Ledger(ledger_dir, readonly=True)
    try:
        by: dict[tuple[Provision, str], int] = {}
        for c in ledger.counts(*year_bounds(year)):
            by[(c.provision, c.verifier_id)] = by.get((c.provision, c.verifier_id), 0) + c.count
    finally:
        ledger.close()
    assert by[(Provision.SIGNING_STATUS, COUNTED)] == 3
    assert by[(Provision.AUTH_STATUS, COUNTED)] == 2
    assert by[(Provision.AUTH_CRL, COUNTED)] == 1
    assert (Provision.AUTH_CRL, "v-group") not in by
    assert (Provision.AUTH_STATUS, "v-sign") not in by  # refused in the tests above
    # The annual report, as an operator runs it.
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "report", "annual", "--year", str(year),
         "--ledger", str(ledger_dir), "--format", "json"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = {p["provision"]: p for p in json.loads(result.stdout)["provisions"]}
    assert len(report) == 9
    assert report["SIGNING_STATUS"]["by_verifier"][COUNTED] == 3
    assert report["AUTH_CRL"]["by_verifier"][COUNTED] == 1
    assert report["VERIFIER_TOKEN"]["total"] == 0
