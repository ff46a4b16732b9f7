"""Pre-produced OCSP responses: signed ahead by the replica's producer, served only
while right, a revocation by a delta answered at once, a producer killed mid-pass.

Real components throughout: the SoftHSM2-backed signer, the responder's supervisor,
workers and producer processes, LMDB, gRPC and HTTP on loopback, and openssl.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from jpki_va.core.domain import CertKind, Loss, parse_record_key
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2, va_pb2_grpc
from jpki_va.server.base.faults import ENV as FAULTS
from jpki_va.server.pki import der as pki_der
from jpki_va.server.pki import ocsp_wire
from jpki_va.server.responder.index_layout import issuer_lookup_keys
from jpki_va.server.responder.index_reader import Index
from tests.support import (
    ALL_ROLES_VERIFIER,
    Issued,
    Pki,
    metric_value,
    openssl,
    preproduced_count,
    produced,
    record_loss,
    request_der,
    running_pki,
    start_responder,
    wait_for,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    with running_pki(tmp_path_factory.mktemp("preproduced"), softhsm_token, workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def issued(pki: Pki) -> list[Issued]:
    certs = [pki.issue(CertKind.CARD_AUTH) for _ in range(4)]
    pki.publish_and_wait()
    return certs


def ask(stub: va_pb2_grpc.StatusServiceStub, der: bytes) -> ocsp.OCSPResponse:
    reply = stub.Ocsp(va_pb2.OcspRequest(der=der), timeout=10)
    response = ocsp.load_der_ocsp_response(reply.der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    return response


def uncached(der: bytes, n: int) -> bytes:
    """The same question with a requestorName of its own: other bytes, one CertID."""
    request_list = ocsp_wire.parse_request(der, 1).request_list
    name = pki_der.tlv(0xA1, pki_der.tlv(0x82, f"r{n}".encode()))  # [1] dNSName
    return pki_der.sequence(pki_der.sequence(name, request_list))


def test_every_certificate_is_pre_produced_and_openssl_accepts_it(
    pki: Pki, issued: list[Issued], tmp_path: Path
) -> None:
    state = produced(pki.responder)
    assert sum(state["counts"].values()) >= len(issued)
    wait_for(lambda: metric_value(pki.metrics_url, "jpki_va_ocsp_preproduced_entries"), "entries")
    before = preproduced_count(pki.metrics_url, "served")
    cert_file, issuer_file = issued[0].pem_files(tmp_path, "good")
    result = openssl(
        "ocsp", "-no_nonce", "-issuer", str(issuer_file), "-cert", str(cert_file),
        "-url", f"{pki.http_url}/ocsp", "-CAfile", str(pki.root_file),
    )  # fmt: skip
    assert "Response verify OK" in result.stderr
    assert f"{cert_file}: good" in result.stdout
    answer = ask(pki.status_stub, request_der(issued[1]))
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert answer.certificates  # the delegated certificate, spliced in
    # Both came from the store (each worker counts, and publishes every 0.2 s).
    wait_for(
        lambda: preproduced_count(pki.metrics_url, "served") >= before + 2, "served pre-produced"
    )


def test_a_nonce_is_always_signed_live(pki: Pki, issued: list[Issued]) -> None:
    produced(pki.responder)
    first, second = (ask(pki.status_stub, request_der(issued[2], bytes([i]) * 16)) for i in (1, 2))
    for response, i in ((first, 1), (second, 2)):
        nonce = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        assert nonce == bytes([i]) * 16
    assert first.signature != second.signature


def test_a_revocation_by_delta_is_answered_at_once(pki: Pki, issued: list[Issued]) -> None:
    produced(pki.responder)
    der = request_der(issued[3])
    assert ask(pki.status_stub, der).certificate_status is ocsp.OCSPCertStatus.GOOD
    record_loss(pki.signer_stub, CertKind.CARD_AUTH, issued[3].serial)
    reply = pki.signer_stub.PublishSnapshot(
        signer_pb2.PublishSnapshotRequest(full=False), timeout=60
    )
    pki.wait_sequence(reply.sequence)
    # The first answer after the delta, on every worker: never the pre-produced GOOD.
    for _ in range(8):
        assert ask(pki.status_stub, der).certificate_status is ocsp.OCSPCertStatus.REVOKED
    # The producer does the certificates a delta's loss events name (or the workers
    # wrote their live answer through); then it is served. Each request is new to the
    # workers' own caches (keyed by the request's bytes): it is asked of the store.
    before = preproduced_count(pki.metrics_url, "served")
    names = iter(range(1, 1000))

    def served_revoked() -> bool:
        response = ask(pki.status_stub, uncached(der, next(names)))
        assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
        return preproduced_count(pki.metrics_url, "served") > before

    wait_for(served_revoked, "the revoked answer pre-produced")


def test_a_producer_killed_mid_pass_leaves_only_right_answers(
    pki: Pki, issued: list[Issued], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed after its first batch (two certificates) is committed, each time it starts,
    # until the variable is gone (a restarted producer reads it anew).
    monkeypatch.setenv(FAULTS, "ocsp.produce.written")
    extra = start_responder(
        pki,
        tmp_path / "killed",
        ocsp_preproduce_batch=2,
        insecure_loopback=True,
        loopback_verifier=ALL_ROLES_VERIFIER,
    )
    try:
        state = wait_for(lambda: _started(extra.responder.preproduced()), "a first batch committed")
        assert not state["done"] and sum(state["counts"].values()) == 2
        with pki.live_index() as index:
            first = [parse_record_key(key) for key in index.keys_after(b"", 2)]
            issuers = {kind: _issuer_of(index, kind, serial) for kind, serial in first}
            statuses = {(k, s): _loss_of(index, k, s) for k, s in first}
        kind, serial = next(ks for ks in first if statuses[ks] is None)  # one not yet lost
        requests = {(k, s): _request(issuers[k], s) for k, s in first}
        with grpc.insecure_channel(extra.address) as channel:
            stub = va_pb2_grpc.StatusServiceStub(channel)
            # What the killed producer left, then a revocation the store cannot know of.
            for (k, s), der in requests.items():
                good = statuses[k, s] is None
                assert ask(stub, der).certificate_status is (
                    ocsp.OCSPCertStatus.GOOD if good else ocsp.OCSPCertStatus.REVOKED
                )
            record_loss(pki.signer_stub, kind, serial)
            reply = pki.signer_stub.PublishSnapshot(
                signer_pb2.PublishSnapshotRequest(full=False), timeout=60
            )
            _wait_sequence(stub, reply.sequence)
            revoked = ask(stub, requests[kind, serial])
            assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED
            monkeypatch.delenv(FAULTS)
            produced(extra.responder)  # a producer that lives finishes a pass
            assert ask(stub, requests[kind, serial]).certificate_status is (
                ocsp.OCSPCertStatus.REVOKED
            )
            for cert in (c for c in issued[:3] if (c.kind, c.serial) != (kind, serial)):
                assert ask(stub, request_der(cert)).certificate_status is (ocsp.OCSPCertStatus.GOOD)
    finally:
        extra.close()


def _started(state: dict[str, Any]) -> dict[str, Any] | None:
    return state if "done" in state else None


def _loss_of(index: Index, kind: CertKind, serial: int) -> Loss | None:
    record = index.get(kind, serial)
    assert record is not None
    return record.loss


def _issuer_of(index: Index, kind: CertKind, serial: int) -> x509.Certificate:
    record = index.get(kind, serial)
    assert record is not None
    return index.issuers[record.issuer_key_id].certificate


def _request(issuer: x509.Certificate, serial: int) -> bytes:
    lookup = issuer_lookup_keys(issuer)[0]  # b"sha1:" + name hash + key hash
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        lookup[5:25], lookup[25:45], serial, hashes.SHA1()
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def _wait_sequence(stub: va_pb2_grpc.StatusServiceStub, sequence: int) -> None:
    request = va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x01")
        )
    )
    wait_for(
        lambda: stub.Check(request, timeout=5).status.index_sequence >= sequence,
        f"snapshot {sequence} served",
    )
