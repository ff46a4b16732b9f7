"""The registry's safety: backups to the object store, and the restore drill.

A signer publishes to a real SeaweedFS (over TLS) and backs its registry up on a
schedule; an operator backs it up on demand while it runs. The signer's host is then
lost (its data directory removed); a new signer restored from the backup into an empty
directory publishes, and every certificate and loss answers exactly as before through
a real responder, one that kept running and one that starts from nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jpki_va.core.domain import CertKind
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2, va_pb2_grpc
from jpki_va.server.app.config import ResponderConfig
from jpki_va.server.app.responder_app import Responder
from jpki_va.server.app.signer_app import SignerApp
from jpki_va.server.snapshot.s3_store import S3Store
from tests.support import (
    ALL_ROLES_VERIFIER,
    JPKI_VA,
    Issued,
    add_all_roles_verifier,
    check_request,
    issue_through,
    record_loss,
    wait_for,
)
from tests.support.seaweed import Seaweed, aws_environment, seaweed_server

BUCKET = "jpki-va-backup"
STORE = f"s3://{BUCKET}/drill"


@dataclass
class Drill:
    seaweed: Seaweed
    directory: Path
    token: HsmConfig

    def signer(self, data_dir: Path, **settings: object) -> SignerApp:
        return self.seaweed.start_signer(data_dir, self.token, STORE, delta_interval=0, **settings)

    @contextmanager
    def responder(self, name: str, root_file: Path) -> Iterator[Responder]:
        """A responder reading the store with read-only credentials, ingesting in a thread."""
        with aws_environment(self.seaweed.env(writer=False)):
            responder = Responder(
                ResponderConfig(
                    snapshot_dir=None,
                    store=STORE,
                    state_dir=self.directory / name,
                    trust_anchors=(root_file,),
                    listen="127.0.0.1:0",
                    workers=1,
                    insecure_loopback=True,
                    loopback_verifier=ALL_ROLES_VERIFIER,
                    poll_interval=0.1,
                )
            )
        responder.start()
        stop = threading.Event()
        runner = threading.Thread(target=responder.run, args=(stop,), daemon=True)
        runner.start()
        try:
            yield responder
        finally:
            stop.set()
            runner.join()
            responder.shutdown()

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*JPKI_VA, "backup", *argv, "--store", STORE],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **self.seaweed.env()},
        )


def _lose(stub: signer_pb2_grpc.SignerServiceStub, cert: Issued) -> None:
    record_loss(stub, cert.kind, cert.serial)


def _stub(app: SignerApp) -> tuple[grpc.Channel, signer_pb2_grpc.SignerServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    return channel, signer_pb2_grpc.SignerServiceStub(channel)


def _answers(responder: Responder, certs: list[Issued]) -> dict[int, bytes]:
    """Each certificate's answer, but for what says when and from which index."""
    answers = {}
    with grpc.insecure_channel(f"127.0.0.1:{responder.port}") as channel:
        stub = va_pb2_grpc.StatusServiceStub(channel)
        for cert in certs:
            status = stub.Check(check_request(cert.kind, cert.serial), timeout=10).status
            status.ClearField("as_of")
            status.ClearField("index_sequence")
            answers[cert.serial] = status.SerializeToString(deterministic=True)
    return answers


def _status(responder: Responder, cert: Issued) -> int:
    answer = _answers(responder, [cert])[cert.serial]
    return int(va_pb2.CertificateStatus.FromString(answer).status)


def _serving(responder: Responder, sequence: int) -> None:
    def served() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{responder.port}") as channel:
            stub = va_pb2_grpc.StatusServiceStub(channel)
            request = check_request(CertKind.CARD_SIGN, 1)
            try:
                return stub.Check(request, timeout=5).status.index_sequence >= sequence
            except grpc.RpcError:
                return False

    wait_for(served, f"snapshot {sequence} served", 60)


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Drill]:
    directory = tmp_path_factory.mktemp("drill")
    with seaweed_server(directory / "weed") as seaweed:
        seaweed.client().create_bucket(Bucket=BUCKET)
        yield Drill(seaweed, directory, softhsm_token)


def test_restore_drill(drill: Drill) -> None:
    with ExitStack() as stack:
        _drill(drill, stack)


def _drill(drill: Drill, stack: ExitStack) -> None:
    lost_host = drill.directory / "signer-a"
    signer = drill.signer(lost_host, bootstrap=True, backup_interval=1.0)
    channel, stub = _stub(signer)
    try:
        root = x509.load_der_x509_certificate(
            stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=30).root_certificate_der
        )
        root_file = drill.directory / "root.pem"
        root_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        add_all_roles_verifier(stub)
        card = issue_through(stub, CertKind.CARD_SIGN, resident_code="70000000001")
        auth = issue_through(stub, CertKind.CARD_AUTH, resident_code="70000000002")
        kept = issue_through(stub, CertKind.CARD_SIGN, resident_code="70000000003")
        certs = [card, auth, kept]
        late = issue_through(stub, CertKind.CARD_SIGN, resident_code="70000000004")
        for lost in (card, auth):
            _lose(stub, lost)
        full = stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=60)
        witness = stack.enter_context(drill.responder("witness", root_file))
        _serving(witness, full.sequence)
        before = _answers(witness, certs)
        statuses = [va_pb2.CertificateStatus.FromString(before[c.serial]).status for c in certs]
        assert statuses == [va_pb2.CERT_STATUS_REVOKED] * 2 + [va_pb2.CERT_STATUS_GOOD]

        # On a schedule, and on demand while the signer runs.
        store = S3Store(BUCKET, "drill", client=drill.seaweed.client())
        wait_for(lambda: len(store.backups()) >= 1, "a scheduled backup", 30)
        assert signer.metrics.backup_last._value.get() > 0
        made = drill.cli("create", "--data-dir", str(lost_host))
        assert made.returncode == 0, made.stderr
        name, _, digest = made.stdout.split()[:3]
        listed = drill.cli("list").stdout.split()
        assert name in listed and listed == sorted(listed)
        record = json.loads(
            drill.seaweed.client()
            .get_object(Bucket=BUCKET, Key=f"drill/backups/{name}/backup.json")["Body"]
            .read()
        )
        assert record["sha256"] == digest and record["snapshot_sequence"] == full.sequence
        # A loss after the last backup, published: what the host's loss puts at risk.
        _lose(stub, late)
        _serving(
            witness, stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(), timeout=60).sequence
        )
    finally:
        channel.close()
        signer.stop()
    shutil.rmtree(lost_host)  # the host is lost

    new_host = drill.directory / "signer-b"
    # A backup whose bytes differ from its record is refused, and nothing is written.
    client = drill.seaweed.client()
    client.copy_object(
        Bucket=BUCKET,
        Key="drill/backups/registry-tampered/backup.json",
        CopySource={"Bucket": BUCKET, "Key": f"drill/backups/{name}/backup.json"},
    )
    client.put_object(
        Bucket=BUCKET, Key="drill/backups/registry-tampered/data.mdb", Body=b"not a registry"
    )
    refused = drill.cli("restore", "--data-dir", str(new_host), "--name", "registry-tampered")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "differs from its record" in refused.stderr
    assert not (new_host / "registry").exists()

    restored = drill.cli("restore", "--data-dir", str(new_host), "--name", name)
    assert restored.returncode == 0, restored.stderr
    assert "hold 1 loss events recorded after this backup" in restored.stderr
    again = drill.cli("restore", "--data-dir", str(new_host), "--name", name)
    assert again.returncode == 1 and "not empty" in again.stderr

    signer = drill.signer(new_host)  # the same HSM; no bootstrap: the hierarchy is restored
    channel, stub = _stub(signer)
    try:
        _lose(stub, late)  # re-recorded, as restore said, before publishing
        published = stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=60)
        assert published.sequence > full.sequence  # above every snapshot in the store
        _serving(witness, published.sequence)
        assert _answers(witness, certs) == before
        with drill.responder("fresh", root_file) as fresh:
            _serving(fresh, published.sequence)
            assert _answers(fresh, certs) == before
        assert _status(witness, late) == va_pb2.CERT_STATUS_REVOKED
        # And it goes on: a new loss is published and answered.
        _lose(stub, kept)
        delta = stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=False), timeout=60)
        _serving(witness, delta.sequence)
        assert _status(witness, kept) == va_pb2.CERT_STATUS_REVOKED
    finally:
        channel.close()
        signer.stop()
