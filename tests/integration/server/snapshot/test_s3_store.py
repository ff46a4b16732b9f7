"""Snapshots through S3-compatible object storage: a real SeaweedFS, a real signer and a
responder of its own (a process, as on another host), under the store's faults.

The signer writes over TLS (the tests' own CA); the responder reads with read-only
credentials through a fault proxy in front of the same server. After each fault the
responder has kept serving its last good index and said so in health and metrics,
and every loss the signer acknowledged is answered REVOKED once the store is sound.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jpki_va.core.domain import CertKind
from jpki_va.core.oids import OID_SNAPSHOT_SIGNING
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2, va_pb2_grpc
from jpki_va.server.app.responder_app import INGEST_HEALTH
from jpki_va.server.app.signer_app import SignerApp
from jpki_va.server.snapshot.manifest import MANIFEST, snapshot_dirname
from jpki_va.server.snapshot.s3_store import S3Store
from jpki_va.server.snapshot.store import publish
from jpki_va.server.snapshot.writer import SnapshotBuilder
from tests.support import (
    ALL_ROLES_VERIFIER,
    Issued,
    add_all_roles_verifier,
    check_request,
    free_port,
    issue_through,
    metric_value,
    record_loss,
    wait_for,
)
from tests.support.processes import ResponderProcess, start_role
from tests.support.seaweed import FaultProxy, Seaweed, seaweed_server

BUCKET = "jpki-va"
PREFIX = "fleet"
STORE = f"s3://{BUCKET}/{PREFIX}"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Fleet:
    seaweed: Seaweed
    proxy: FaultProxy
    signer: SignerApp
    stub: signer_pb2_grpc.SignerServiceStub
    responder: ResponderProcess
    metrics_port: int
    root_file: Path
    client: Any
    lost: list[Issued] = field(default_factory=list)  # every loss the signer acknowledged

    def issue(self, kind: CertKind = CertKind.CARD_SIGN) -> Issued:
        return issue_through(self.stub, kind)

    def lose(self, cert: Issued) -> None:
        record_loss(self.stub, cert.kind, cert.serial)
        self.lost.append(cert)

    def publish(self, *, full: bool = False) -> int:
        reply = self.stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=full), timeout=60)
        return int(reply.sequence)

    def status(self, cert: Issued) -> va_pb2.CertificateStatus:
        return self._check(cert.kind, cert.serial)

    def _check(self, kind: CertKind, serial: int) -> va_pb2.CertificateStatus:
        with grpc.insecure_channel(self.responder.address) as channel:
            stub = va_pb2_grpc.StatusServiceStub(channel)
            return stub.Check(check_request(kind, serial), timeout=10).status

    def served(self) -> int:
        """The sequence of the index that answers (0 while none does)."""
        try:
            return int(self._check(CertKind.CARD_SIGN, 1).index_sequence)
        except grpc.RpcError:
            return 0

    def wait_served(self, sequence: int) -> None:
        wait_for(lambda: self.served() >= sequence, f"the responder to serve {sequence}", 60)

    def metric(self, name: str) -> float | None:
        return metric_value(f"http://127.0.0.1:{self.metrics_port}/metrics", name)

    def health(self, service: str) -> int:
        with grpc.insecure_channel(self.responder.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=10
            )
        return int(reply.status)

    def wait_store_failing(self) -> None:
        """The responder says so: the metrics and the ingest part of its health."""
        wait_for(lambda: self.metric("jpki_va_store_failing") == 1, "store failing", 60)
        assert self.metric("jpki_va_ingest_failing") == 1
        # The workers take the supervisor's word at their next turn.
        wait_for(lambda: self.health(INGEST_HEALTH) == NOT_SERVING, "ingest not serving", 10)
        assert self.health("") == SERVING  # the last good index still answers

    def wait_recovered(self, sequence: int) -> None:
        self.wait_served(sequence)
        wait_for(lambda: self.metric("jpki_va_store_failing") == 0, "store answering", 60)
        wait_for(lambda: self.health(INGEST_HEALTH) == SERVING, "ingest serving", 60)

    def key(self, sequence: int, rel: str) -> str:
        return f"{PREFIX}/snapshots/{snapshot_dirname(sequence)}/{rel}"

    def delta_crls(self, sequence: int) -> dict[str, bytes]:
        """A committed snapshot's delta CRLs as stored, by partition."""
        raw = self.client.get_object(Bucket=BUCKET, Key=self.key(sequence, MANIFEST))
        listed = json.loads(raw["Body"].read())["crls"]
        return {
            c["partition"]: self.client.get_object(
                Bucket=BUCKET, Key=self.key(sequence, c["file"])
            )["Body"].read()
            for c in listed
            if c.get("delta_base") is not None
        }

    def assert_losses_revoked(self) -> None:
        for cert in self.lost:
            assert self.status(cert).status == va_pb2.CERT_STATUS_REVOKED, cert.serial


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("store")
    with seaweed_server(directory / "weed") as seaweed:
        client = seaweed.client()
        client.create_bucket(Bucket=BUCKET)
        proxy = FaultProxy(seaweed.http_port)
        signer = seaweed.start_signer(
            directory / "signer",
            softhsm_token,
            STORE,
            delta_interval=0,
            bootstrap=True,
            retention_crl_file=5.0,  # seconds: pruning is seen within the test
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{signer.port}")
        stub = signer_pb2_grpc.SignerServiceStub(channel)
        root = x509.load_der_x509_certificate(
            stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=30).root_certificate_der
        )
        root_file = directory / "root.pem"
        root_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        add_all_roles_verifier(stub)
        port, metrics_port = free_port(), free_port()
        argv = [
            "responder", "--store", STORE, "--state-dir", str(directory / "responder"),
            "--trust-anchor", str(root_file), "--workers", "1", "--insecure-loopback",
            "--loopback-verifier", ALL_ROLES_VERIFIER, "--poll-interval", "0.2",
            "--listen", f"127.0.0.1:{port}", "--metrics-port", str(metrics_port),
            "--signer", f"127.0.0.1:{signer.port}",
        ]  # fmt: skip
        # Read-only credentials, through the fault proxy: as a responder on another host.
        role = start_role(argv, env=seaweed.env(writer=False, endpoint=proxy.endpoint))
        try:
            role.wait_output(f"responder listening on port {port}")
            fleet = Fleet(
                seaweed,
                proxy,
                signer,
                stub,
                ResponderProcess(role, port),
                metrics_port,
                root_file,
                client,
            )
            yield fleet
        finally:
            role.stop()
            proxy.close()
            channel.close()
            signer.stop()


def test_snapshots_travel_through_the_store(fleet: Fleet) -> None:
    kept, lost = fleet.issue(), fleet.issue(CertKind.CARD_AUTH)
    fleet.lose(lost)
    full = fleet.publish(full=True)
    fleet.wait_served(full)
    assert fleet.status(kept).status == va_pb2.CERT_STATUS_GOOD
    assert fleet.status(lost).status == va_pb2.CERT_STATUS_REVOKED
    # Committed in the bucket, manifest and all; nothing left on the signer's disk.
    fleet.client.head_object(Bucket=BUCKET, Key=fleet.key(full, MANIFEST))
    assert not list(fleet.signer.config.snapshot_dir.iterdir())
    # A delta the same way.
    fleet.lose(kept)
    delta = fleet.publish()
    fleet.wait_served(delta)
    assert fleet.status(kept).status == va_pb2.CERT_STATUS_REVOKED
    assert (fleet.metric("jpki_va_store_fetches_total") or 0) >= 2


def test_a_delta_carries_only_the_delta_crls_signed_for_it(fleet: Fleet) -> None:
    """As with the local directory: a partition that lost nothing since the previous
    delta has no delta CRL in the next one; the replica keeps the one it has."""
    here = fleet.issue(CertKind.CARD_AUTH)
    there = issue_through(fleet.stub, CertKind.CARD_AUTH, municipality="271004")
    fleet.publish(full=True)
    fleet.lose(here)
    first = fleet.publish()
    fleet.lose(there)
    second = fleet.publish()
    assert second == first + 1
    assert set(fleet.delta_crls(first)) == {"131016"}
    assert set(fleet.delta_crls(second)) == {"271004"}
    fleet.wait_served(second)
    fleet.assert_losses_revoked()


def test_store_unreachable_then_back(fleet: Fleet) -> None:
    before = fleet.served()
    cert = fleet.issue()
    fleet.publish()
    fleet.wait_served(before + 1)
    fleet.proxy.set_mode("refuse")
    try:
        fleet.lose(cert)
        sequence = fleet.publish()
        fleet.wait_store_failing()
        assert fleet.served() == before + 1
        assert fleet.status(cert).status == va_pb2.CERT_STATUS_GOOD  # the last good index
    finally:
        fleet.proxy.set_mode("pass")
    fleet.wait_recovered(sequence)
    fleet.assert_losses_revoked()


def test_store_that_lists_but_fails_on_get(fleet: Fleet) -> None:
    before = fleet.served()
    cert = fleet.issue()
    fleet.proxy.set_mode("fail-get")
    try:
        fleet.lose(cert)
        sequence = fleet.publish()
        fleet.wait_store_failing()
        assert fleet.proxy.refused_gets > 0
        assert fleet.served() == before
    finally:
        fleet.proxy.set_mode("pass")
    fleet.wait_recovered(sequence)
    fleet.assert_losses_revoked()


def _published_unseen(fleet: Fleet) -> int:
    """A delta with one more loss, published while the responder cannot read the store."""
    cert = fleet.issue()
    fleet.proxy.set_mode("refuse")
    fleet.lose(cert)
    return fleet.publish()


@pytest.mark.parametrize("damage", ["truncated", "changed"])
def test_object_truncated_or_changed(fleet: Fleet, damage: str) -> None:
    before = fleet.served()
    refused = fleet.metric("jpki_va_snapshots_refused_total") or 0
    try:
        sequence = _published_unseen(fleet)
        key = fleet.key(sequence, "events.bin")
        genuine = fleet.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        bad = (
            genuine[: len(genuine) // 2]
            if damage == "truncated"
            else genuine[:-1] + bytes([genuine[-1] ^ 0xFF])
        )
        fleet.client.put_object(Bucket=BUCKET, Key=key, Body=bad)
    finally:
        fleet.proxy.set_mode("pass")
    wait_for(
        lambda: (fleet.metric("jpki_va_snapshots_refused_total") or 0) > refused,
        "the damaged snapshot refused",
        60,
    )
    assert fleet.served() == before
    assert fleet.health("") == SERVING
    # The genuine object back: fetched again and ingested.
    fleet.client.put_object(Bucket=BUCKET, Key=key, Body=genuine)
    fleet.wait_served(sequence)
    fleet.assert_losses_revoked()


def test_manifest_that_arrives_before_its_files(fleet: Fleet) -> None:
    before = fleet.served()
    try:
        sequence = _published_unseen(fleet)
        key = fleet.key(sequence, "events.bin")
        held_back = fleet.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        fleet.client.delete_object(Bucket=BUCKET, Key=key)
    finally:
        fleet.proxy.set_mode("pass")
    fleet.wait_store_failing()
    assert fleet.served() == before
    fleet.client.put_object(Bucket=BUCKET, Key=key, Body=held_back)  # the file arrives
    fleet.wait_recovered(sequence)
    fleet.assert_losses_revoked()


def _foreign_snapshot(directory: Path, sequence: int) -> Path:
    """A well-formed snapshot signed by a key no trust anchor of ours vouches for."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another authority")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([OID_SNAPSHOT_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    builder = SnapshotBuilder(directory, sequence)
    builder.add_verifiers([])
    builder.seal(
        type="full",
        base_sequence=None,
        created_at=now,
        event_sequence=0,
        issuer_key_ids=[],
        signing_key=key,
        signer_cert=cert,
    )
    return builder.path


def test_foreign_and_older_snapshots_in_the_bucket(fleet: Fleet, tmp_path: Path) -> None:
    before = fleet.served()
    refused = fleet.metric("jpki_va_snapshots_refused_total") or 0
    writer = S3Store(BUCKET, PREFIX, client=fleet.client)
    publish(writer, before + 2, _foreign_snapshot(tmp_path / "foreign", before + 2))
    # An older genuine full snapshot copied in under a newer sequence.
    older = next(
        seq
        for seq in writer.sequences()
        if seq < before and json.loads(writer.manifest(seq))["type"] == "full"
    )
    for obj in fleet.client.list_objects_v2(Bucket=BUCKET, Prefix=fleet.key(older, "")).get(
        "Contents", []
    ):
        rel = obj["Key"].rsplit(f"{snapshot_dirname(older)}/", 1)[1]
        if rel != MANIFEST:
            fleet.client.copy_object(
                Bucket=BUCKET,
                Key=fleet.key(before + 1, rel),
                CopySource={"Bucket": BUCKET, "Key": obj["Key"]},
            )
    fleet.client.copy_object(  # the manifest last, as a writer would
        Bucket=BUCKET,
        Key=fleet.key(before + 1, MANIFEST),
        CopySource={"Bucket": BUCKET, "Key": fleet.key(older, MANIFEST)},
    )
    wait_for(
        lambda: (fleet.metric("jpki_va_snapshots_refused_total") or 0) >= refused + 2,
        "both refused",
        60,
    )
    assert fleet.served() == before
    assert fleet.health("") == SERVING
    # The signer publishes above them; its snapshot is ingested.
    cert = fleet.issue()
    fleet.lose(cert)
    sequence = fleet.publish()
    assert sequence > before + 2
    fleet.wait_served(sequence)
    fleet.assert_losses_revoked()


def test_snapshots_past_retention_leave_the_bucket(fleet: Fleet) -> None:
    first = fleet.publish(full=True)
    fleet.wait_served(first)
    time.sleep(5.5)  # the retention of CRL files (5 s here) passes
    second = fleet.publish(full=True)
    fleet.wait_served(second)
    remaining = S3Store(BUCKET, PREFIX, client=fleet.client).sequences()
    assert first not in remaining and second in remaining
    assert min(remaining) >= first  # what came before the live full is gone too
    fleet.assert_losses_revoked()


def test_the_pointer_moves_with_every_commit_only(fleet: Fleet) -> None:
    store = S3Store(BUCKET, PREFIX, client=fleet.client)
    fleet.publish()
    before = store.marker()
    assert before  # that publish wrote it
    assert store.marker() == before  # nothing committed since: unchanged
    sequence = fleet.publish()
    assert store.marker() != before
    body = fleet.client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/latest")["Body"].read()
    assert int(body) == sequence


def test_a_responder_learns_of_a_snapshot_by_the_pointer(fleet: Fleet, tmp_path: Path) -> None:
    """Its scan runs once a minute; the pointer, read every 0.2 s, brings each snapshot.

    Full snapshots where the responder may take a while: this module's signer keeps
    CRL files (snapshots) for 5 s only, so a delta could be pruned before a slow new
    responder fetched it.
    """
    port = free_port()
    argv = [
        "responder", "--store", STORE, "--state-dir", str(tmp_path / "responder"),
        "--trust-anchor", str(fleet.root_file), "--workers", "1", "--insecure-loopback",
        "--loopback-verifier", ALL_ROLES_VERIFIER, "--poll-interval", "60s",
        "--notice-interval", "200ms", "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    role = start_role(argv, env=fleet.seaweed.env(writer=False))
    try:
        role.wait_output(f"responder listening on port {port}")
        other = ResponderProcess(role, port)
        cert = fleet.issue()

        def status() -> int:
            with grpc.insecure_channel(other.address) as channel:
                stub = va_pb2_grpc.StatusServiceStub(channel)
                try:
                    reply = stub.Check(check_request(cert.kind, cert.serial), timeout=10)
                except grpc.RpcError:
                    return -1
            return int(reply.status.status)

        fleet.publish(full=True)
        wait_for(lambda: status() == va_pb2.CERT_STATUS_GOOD, "the new certificate", 30)
        fleet.lose(cert)
        began = time.monotonic()
        fleet.publish()  # a delta, fetched well within the retention
        wait_for(lambda: status() == va_pb2.CERT_STATUS_REVOKED, "the loss by the pointer", 20)
        print(f"loss published -> REVOKED with a 60 s scan: {time.monotonic() - began:.2f} s")
    finally:
        role.stop()
