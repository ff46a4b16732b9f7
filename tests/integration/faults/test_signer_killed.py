"""The signer killed (SIGKILL) at every step of a publish, then restarted (issue 15, item 14).

At each fault point of a delta and of a full publish: the losses the signer had
acknowledged before the kill, and those it acknowledges after its restart, are
answered REVOKED by a responder that ran through it all and by a fresh one; no
snapshot under a real name is half-written; nothing of the killed signer lives on.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import Role
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2, va_pb2_grpc, verifiers_pb2
from jpki_va.server.base.faults import POINTS
from jpki_va.server.snapshot.manifest import SnapshotRejected
from jpki_va.server.snapshot.verify import SnapshotVerifier
from tests.support import (
    ALL_ROLES_VERIFIER,
    ExtraResponder,
    start_responder_over,
    throwaway_certificate,
    wait_for,
)
from tests.support.processes import SignerProcess, start_signer_process

SIGNER_POINTS = [p for p in POINTS if p.startswith(("publish.", "snapshot."))]


def _issue(stub: signer_pb2_grpc.SignerServiceStub, n: int) -> int:
    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    reply = stub.IssueCertificate(
        signer_pb2.IssueCertificateRequest(
            kind=va_pb2.CERT_KIND_CARD_AUTH,
            resident_code=f"{70000000000 + n:011d}",
            municipality_code="131016",
            holder=signer_pb2.HolderInfo(
                name="障害 試験", address="千代田区1-1", birth_date="1990-01-01", sex="女"
            ),
            public_key_der=spki,
        ),
        timeout=30,
    )
    return int.from_bytes(reply.serial, "big")


def _lose(stub: signer_pb2_grpc.SignerServiceStub, serial: int) -> None:
    """Record a loss; returning at all means the signer acknowledged it."""
    stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_AUTH,
            serial=serial.to_bytes(8, "big"),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )


def _publish(stub: signer_pb2_grpc.SignerServiceStub, *, full: bool) -> int:
    return stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=full), timeout=60).sequence


@dataclass
class Watcher:
    """A responder over the signer's snapshots, in this process."""

    running: ExtraResponder
    channel: grpc.Channel

    def status(self, serial: int) -> va_pb2.CertificateStatus:
        request = va_pb2.CheckRequest(
            cert=va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(
                    kind=va_pb2.CERT_KIND_CARD_AUTH, serial=serial.to_bytes(8, "big")
                )
            )
        )
        return va_pb2_grpc.StatusServiceStub(self.channel).Check(request, timeout=10).status

    def wait_revoked(self, serials: list[int], timeout: float = 30.0) -> None:
        def all_revoked() -> bool:
            try:
                return all(self.status(s).status == va_pb2.CERT_STATUS_REVOKED for s in serials)
            except grpc.RpcError:
                return False

        wait_for(all_revoked, f"{serials} answered REVOKED", timeout)

    def close(self) -> None:
        self.running.close()
        self.channel.close()


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.close()


def _watch(snapshots: Path, root_file: Path, state: Path, started: list[Watcher]) -> Watcher:
    running = start_responder_over(
        snapshots, root_file, state, insecure_loopback=True, loopback_verifier=ALL_ROLES_VERIFIER
    )
    watcher = Watcher(running, grpc.insecure_channel(running.address))
    started.append(watcher)
    return watcher


def _no_half_snapshot(snapshots: Path, root: x509.Certificate) -> None:
    """Every snapshot under a real name verifies in full (a temporary one may be left)."""
    verifier = SnapshotVerifier([root], SystemClock())
    for path in sorted(snapshots.iterdir()):
        if path.name.startswith("."):
            continue
        try:
            verifier.verify(path)
        except SnapshotRejected as exc:
            raise AssertionError(f"{path.name} is under a real name but refused: {exc}") from exc


def _setup(stub: signer_pb2_grpc.SignerServiceStub, directory: Path) -> x509.Certificate:
    root = x509.load_der_x509_certificate(
        stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=30).root_certificate_der
    )
    (directory / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=ALL_ROLES_VERIFIER,
            roles=[int(r) for r in Role],  # type: ignore[misc]
            client_certificate_der=[
                throwaway_certificate(ALL_ROLES_VERIFIER).public_bytes(serialization.Encoding.DER)
            ],
            agreement="TEST-AGREEMENT",
        ),
        timeout=30,
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True], ids=["delta", "full"])
@pytest.mark.parametrize("point", SIGNER_POINTS)
def test_signer_killed_while_publishing_loses_nothing_acknowledged(
    softhsm_token: HsmConfig, tmp_path: Path, watchers: list[Watcher], point: str, full: bool
) -> None:
    data = tmp_path / "signer"
    snapshots = data / "snapshots"
    signer: SignerProcess = start_signer_process(data, softhsm_token)
    try:
        with signer.stub() as stub:
            root = _setup(stub, tmp_path)
            serials = [_issue(stub, n) for n in range(4)]
            _lose(stub, serials[0])
            _publish(stub, full=True)
    finally:
        # a crash at a quiet moment: nothing in flight
        signer.role.process.kill()
        signer.role.wait_exit()
    running = _watch(snapshots, tmp_path / "root.pem", tmp_path / "running", watchers)
    running.wait_revoked([serials[0]])

    armed = start_signer_process(data, softhsm_token, faults=point)
    with armed.stub() as stub:
        _lose(stub, serials[1])  # acknowledged before the kill
        with pytest.raises(grpc.RpcError) as failed:
            _publish(stub, full=full)
    assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    assert armed.role.wait_exit() == -signal.SIGKILL, armed.role.text
    assert f"fault point {point}" in armed.role.text
    _no_half_snapshot(snapshots, root)

    restarted = start_signer_process(data, softhsm_token)
    try:
        with restarted.stub() as stub:
            _lose(stub, serials[2])
            _publish(stub, full=False)
        _no_half_snapshot(snapshots, root)
        # The responder that lived through the crash, and one that starts afresh.
        running.wait_revoked(serials[:3])
        fresh = _watch(snapshots, tmp_path / "root.pem", tmp_path / "fresh", watchers)
        fresh.wait_revoked(serials[:3])
        for watcher in (running, fresh):
            assert watcher.status(serials[3]).status == va_pb2.CERT_STATUS_GOOD
    finally:
        restarted.role.stop()
    assert restarted.role.process.returncode == 0, restarted.role.text
