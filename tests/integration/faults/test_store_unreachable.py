"""The snapshot store unreachable, and the signer killed meanwhile (issue 15, item 14).

A signer publishing to a real SeaweedFS through a fault proxy, and a responder reading
the same bucket. With the store unreachable the signer still acknowledges losses but
publishes nothing, and says why (UNAVAILABLE, cause store-unavailable); it is then
SIGKILLed, restarted once the store is back, and publishes every acknowledged loss.
Killed between uploading a snapshot's files and its manifest, it leaves nothing a
responder reads, and clears the unfinished upload when it starts again.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from jpki_va.core.domain import CertKind
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2, va_pb2_grpc
from jpki_va.server.rpc.server_common import CAUSE, STORE_UNAVAILABLE
from jpki_va.server.snapshot.manifest import MANIFEST
from tests.support import (
    ALL_ROLES_VERIFIER,
    Issued,
    add_all_roles_verifier,
    check_request,
    free_port,
    issue_through,
    record_loss,
    wait_for,
)
from tests.support.processes import (
    ResponderProcess,
    SignerProcess,
    start_role,
    start_signer_process,
)
from tests.support.seaweed import FaultProxy, Seaweed, seaweed_server

BUCKET = "jpki-va-faults"
STORE = f"s3://{BUCKET}/faults"


@dataclass
class Setting:
    seaweed: Seaweed
    proxy: FaultProxy  # between the signer and the store
    directory: Path
    token: HsmConfig

    def signer(self, faults: str = "") -> SignerProcess:
        return start_signer_process(
            self.directory / "signer",
            self.token,
            faults,
            extra=("--store", STORE, "--backup-interval", "0"),
            env=self.seaweed.env(endpoint=self.proxy.endpoint),
        )


@pytest.fixture(scope="module")
def setting(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig
) -> Iterator[Setting]:
    directory = tmp_path_factory.mktemp("store-faults")
    with seaweed_server(directory / "weed") as seaweed:
        seaweed.client().create_bucket(Bucket=BUCKET)
        proxy = FaultProxy(seaweed.http_port)
        try:
            yield Setting(seaweed, proxy, directory, softhsm_token)
        finally:
            proxy.close()


def _lose(stub: signer_pb2_grpc.SignerServiceStub, cert: Issued) -> None:
    record_loss(stub, cert.kind, cert.serial)


def _status(responder: ResponderProcess, cert: Issued) -> tuple[int, int]:
    """(status, index sequence) of the responder's answer."""
    with grpc.insecure_channel(responder.address) as channel:
        reply = va_pb2_grpc.StatusServiceStub(channel).Check(
            check_request(cert.kind, cert.serial), timeout=10
        )
    return int(reply.status.status), int(reply.status.index_sequence)


def _revoked_at(responder: ResponderProcess, cert: Issued, sequence: int) -> None:
    def seen() -> bool:
        try:
            status, served = _status(responder, cert)
        except grpc.RpcError:
            return False
        return served >= sequence and status == va_pb2.CERT_STATUS_REVOKED

    wait_for(seen, f"{cert.serial:x} REVOKED from snapshot {sequence}", 60)


def _uncommitted(setting: Setting) -> list[str]:
    """Snapshot prefixes in the bucket with objects but no manifest."""
    client = setting.seaweed.client()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="faults/snapshots/", Delimiter="/")
    prefixes = [p["Prefix"] for p in listed.get("CommonPrefixes", [])]

    def count(prefix: str) -> int:
        return int(client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount", 0))

    return [p for p in prefixes if count(p) and not count(p + MANIFEST)]


def test_store_unreachable_and_the_signer_killed(setting: Setting) -> None:
    signer = setting.signer()
    responder: ResponderProcess | None = None
    try:
        with signer.stub() as stub:
            add_all_roles_verifier(stub)
            root = stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=30).root_certificate_der
            root_file = setting.directory / "root.der"
            root_file.write_bytes(root)
            certs = [issue_through(stub, CertKind.CARD_AUTH) for _ in range(3)]
            first = stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=60)
        port = free_port()
        argv = [
            "responder", "--store", STORE, "--state-dir", str(setting.directory / "resp"),
            "--trust-anchor", str(root_file), "--workers", "1", "--insecure-loopback",
            "--loopback-verifier", ALL_ROLES_VERIFIER, "--poll-interval", "0.2",
            "--listen", f"127.0.0.1:{port}",
        ]  # fmt: skip
        role = start_role(argv, env=setting.seaweed.env(writer=False))
        responder = ResponderProcess(role, port)
        role.wait_output(f"responder listening on port {port}")
        wait_for(lambda: _served(responder, certs[0]) >= first.sequence, "first snapshot", 60)

        setting.proxy.set_mode("refuse")  # the store unreachable from the signer
        with signer.stub() as stub:
            _lose(stub, certs[0])  # acknowledged, durably
            with pytest.raises(grpc.RpcError) as failed:
                stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(), timeout=120)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        trailer = [(m.key, str(m.value)) for m in failed.value.trailing_metadata() or ()]
        assert (CAUSE, STORE_UNAVAILABLE) in trailer
        assert _status(responder, certs[0]) == (va_pb2.CERT_STATUS_GOOD, first.sequence)
        signer.role.process.send_signal(signal.SIGKILL)
        signer.role.wait_exit()

        setting.proxy.set_mode("pass")
        signer = setting.signer()
        with signer.stub() as stub:
            _lose(stub, certs[1])
            after = stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(), timeout=60)
        for cert in certs[:2]:
            _revoked_at(responder, cert, after.sequence)

        # Killed between the files and the manifest: nothing a responder reads.
        signer.role.stop()
        signer = setting.signer("snapshot.manifest-written")
        with signer.stub() as stub:
            _lose(stub, certs[2])
            with pytest.raises(grpc.RpcError):
                stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(), timeout=60)
        signer.role.wait_exit()
        assert _uncommitted(setting)  # the killed upload, without its manifest
        assert _status(responder, certs[2])[0] == va_pb2.CERT_STATUS_GOOD
        signer = setting.signer()
        signer.role.wait_output("left by a publish that did not finish")
        assert not _uncommitted(setting)
        with signer.stub() as stub:
            last = stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(), timeout=60)
        for cert in certs:
            _revoked_at(responder, cert, last.sequence)
    finally:
        if responder is not None:
            responder.role.stop()
        signer.role.stop()


def _served(responder: ResponderProcess, cert: Issued) -> int:
    try:
        return _status(responder, cert)[1]
    except grpc.RpcError:
        return 0
