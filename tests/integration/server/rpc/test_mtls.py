"""Entitlements over real mTLS on 127.0.0.1: every row of DESIGN §7 the responder serves.

Allowed roles get answers; the others get PERMISSION_DENIED naming the missing role.
Status, OCSP, CRL files, the revocation feed, the three mappings and renewal, and
signing records (the holder consented to every verifier, so only roles decide).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from jpki_va.core.clock import JST
from jpki_va.core.domain import CertKind, LinkType, Provision, Role
from jpki_va.protos import (
    crl_pb2,
    crl_pb2_grpc,
    mapping_pb2,
    mapping_pb2_grpc,
    record_pb2,
    record_pb2_grpc,
    signer_pb2,
    va_pb2,
    va_pb2_grpc,
    verifiers_pb2,
)
from jpki_va.server.app.config import TlsFiles
from jpki_va.server.law.entitlements import ENTITLEMENTS, mapping_provision, status_provision
from jpki_va.server.ledger.provisions import read_ledgers
from jpki_va.server.ledger.report import Period
from tests.support import JPKI_VA, REPO, ExtraResponder, Issued, Pki, start_responder, wait_for
from tests.support.tls import TlsCa, TlsIdentity

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

    def mapping_stub(self, who: str) -> mapping_pb2_grpc.MappingServiceStub:
        return mapping_pb2_grpc.MappingServiceStub(self.channel(who))

    def record_stub(self, who: str) -> record_pb2_grpc.RecordServiceStub:
        return record_pb2_grpc.RecordServiceStub(self.channel(who))

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
    for name in VERIFIERS:  # 第18条3項: consent is per verifier here; roles decide below
        pki.signer_stub.RecordConsent(
            signer_pb2.RecordConsentRequest(resident_code="70000000001", verifier=name, grant=True),
            timeout=30,
        )
    sequence = pki.publish_and_wait()
    responder = start_responder(
        pki,
        base / "state",
        tls=TlsFiles(server.cert, server.key, ca.cert_file),
        insecure_loopback=False,
        max_watches=15,  # the feed rows open many in a row; a cancel frees its slot soon after
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


def _allowed(roles: set[Role], provision: Provision) -> bool:
    return any(needed <= roles for needed in ENTITLEMENTS[provision])


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


MAPPINGS = [
    (CertKind.CARD_SIGN, CertKind.MOBILE_SIGN),
    (CertKind.MOBILE_SIGN, CertKind.CARD_SIGN),
    (CertKind.CARD_AUTH, CertKind.CARD_SIGN),
    (CertKind.CARD_SIGN, CertKind.CARD_AUTH),
    (CertKind.CARD_AUTH, CertKind.MOBILE_AUTH),
    (CertKind.MOBILE_AUTH, CertKind.CARD_AUTH),
    *((k, k) for k in CertKind),  # renewal: the same entitlement as status of the kind
]
MAP_CASES = [(who, source, to) for who in VERIFIERS for source, to in MAPPINGS]


@pytest.mark.parametrize(
    ("who", "source", "to"), MAP_CASES, ids=[f"{w}-{s.slug}-to-{t.slug}" for w, s, t in MAP_CASES]
)
def test_mappings_by_role(world: World, who: str, source: CertKind, to: CertKind) -> None:
    provision = status_provision(to) if source is to else mapping_provision(source, to)
    request = mapping_pb2.MapRequest(
        cert=_by_serial(world.certs[source]).cert.kind_serial,
        to=int(to),  # type: ignore[arg-type]
    )
    stub = world.mapping_stub(who)
    if _allowed(VERIFIERS[who], provision):
        reply = stub.Map(request, timeout=10)
        serials = [int.from_bytes(c.status.serial, "big") for c in reply.certificates]
        # One holder with one certificate of each kind; nothing was renewed.
        assert serials == ([] if source is to else [world.certs[to].serial])
        assert all(c.status.status == va_pb2.CERT_STATUS_GOOD for c in reply.certificates)
        if source is not to:
            assert reply.certificates[0].type == int(LinkType(provision_type(source, to)))
    else:
        with pytest.raises(grpc.RpcError) as info:
            stub.Map(request, timeout=10)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert who in (info.value.details() or "")


def provision_type(source: CertKind, to: CertKind) -> LinkType:
    return {
        Provision.MAP_CARD_SIGN_MOBILE_SIGN: LinkType.CARD_SIGN_MOBILE_SIGN,
        Provision.MAP_CARD_AUTH_CARD_SIGN: LinkType.CARD_AUTH_CARD_SIGN,
        Provision.MAP_CARD_AUTH_MOBILE_AUTH: LinkType.CARD_AUTH_MOBILE_AUTH,
    }[mapping_provision(source, to)]


SIGNING = [CertKind.CARD_SIGN, CertKind.MOBILE_SIGN]
RECORD_CASES = [(who, kind) for who in VERIFIERS for kind in SIGNING]


@pytest.mark.parametrize(
    ("who", "kind"), RECORD_CASES, ids=[f"{w}-{k.slug}" for w, k in RECORD_CASES]
)
def test_signing_records_by_role(world: World, who: str, kind: CertKind) -> None:
    request = record_pb2.GetSigningRecordRequest(
        cert=_by_serial(world.certs[kind]).cert.kind_serial
    )
    stub = world.record_stub(who)
    if _allowed(VERIFIERS[who], Provision.SIGNING_RECORD):
        record = stub.GetSigningRecord(request, timeout=10).record
        assert int.from_bytes(record.serial, "big") == world.certs[kind].serial
        assert record.name
    else:
        with pytest.raises(grpc.RpcError) as info:
            stub.GetSigningRecord(request, timeout=10)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "SIGNING_VERIFIER" in (info.value.details() or "")


@pytest.mark.parametrize(("who", "kind"), CASES, ids=[f"{w}-{k.slug}" for w, k in CASES])
def test_revocation_feed_by_role(world: World, who: str, kind: CertKind) -> None:
    request = crl_pb2.WatchRevocationsRequest(since=0, kinds=[int(kind)])  # type: ignore[list-item]
    call = world.crl_stub(who).WatchRevocations(request, timeout=10)
    try:
        if _status_allowed(VERIFIERS[who], kind):
            first = next(iter(call))
            assert first.through >= 0
            assert all(e.kind == int(kind) for e in first.events)
        else:
            with pytest.raises(grpc.RpcError) as info:
                next(iter(call))
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        call.cancel()  # type: ignore[no-untyped-call]


def test_the_feed_carries_only_entitled_kinds(world: World) -> None:
    # Three kinds lose effect; each verifier asking for everything gets its own kinds.
    pki = world.pki
    code = "70000000009"
    card_sign = pki.issue(CertKind.CARD_SIGN, resident_code=code)
    pki.issue(CertKind.CARD_AUTH, resident_code=code)
    pki.issue(CertKind.MOBILE_SIGN, resident_code=code, card=card_sign)
    # Deletion of the resident record (not by move-out) ends all of them (第12条, 第31条).
    pki.signer_stub.RecordResidentEvent(
        signer_pb2.RecordResidentEventRequest(
            resident_code=code, event=signer_pb2.RESIDENT_EVENT_RECORD_DELETED
        ),
        timeout=30,
    )
    sequence = pki.publish_and_wait(full=False)
    wait_for(
        lambda: _served_sequence(world, "v-auth", CertKind.CARD_AUTH) >= sequence,
        "the TLS responder to apply the delta",
    )
    seen: dict[str, set[int]] = {}
    for who in ("v-auth", "v-sign", "v-sign-auth"):
        call = world.crl_stub(who).WatchRevocations(crl_pb2.WatchRevocationsRequest(), timeout=10)
        try:
            seen[who] = {e.kind for e in next(iter(call)).events}
        finally:
            call.cancel()  # type: ignore[no-untyped-call]
    assert seen["v-auth"] and seen["v-auth"] <= {
        va_pb2.CERT_KIND_CARD_AUTH,
        va_pb2.CERT_KIND_MOBILE_AUTH,
    }
    assert seen["v-sign"] and seen["v-sign"] <= {
        va_pb2.CERT_KIND_CARD_SIGN,
        va_pb2.CERT_KIND_MOBILE_SIGN,
    }
    assert seen["v-sign-auth"] == seen["v-auth"] | seen["v-sign"]


def _served_sequence(world: World, who: str, kind: CertKind) -> int:
    reply = world.stub(who).Check(_by_serial(world.certs[kind]), timeout=10)
    return int(reply.status.index_sequence)


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
    assert reply.results[1].error_code == va_pb2.CHECK_ERROR_CODE_PERMISSION_DENIED
    assert not reply.results[0].error_code
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
    ledger = read_ledgers(ledger_dir)
    try:
        by: dict[tuple[Provision, str], int] = {}
        for c in ledger.counts(Period.calendar_year(year).start, Period.calendar_year(year).end):
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
        [*JPKI_VA, "report", "annual", "--year", str(year),
         "--ledger", str(ledger_dir), "--ledger", str(world.pki.signer.config.ledger_dir),
         "--format", "json"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = {p["provision"]: p for p in json.loads(result.stdout)["provisions"]}
    assert len(report) == 9
    assert report["SIGNING_STATUS"]["by_verifier"][COUNTED] == 3
    assert report["AUTH_CRL"]["by_verifier"][COUNTED] == 1
    assert report["VERIFIER_TOKEN"]["total"] == 0
