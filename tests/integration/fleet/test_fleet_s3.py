"""The fleet over object storage: three replicas behind Envoy that learn of, fetch and
ingest every snapshot through a real SeaweedFS (issue 13 items 2 and 4).

The signer publishes a delta every second into the bucket, over TLS; the replicas read
it with read-only credentials through a fault proxy in front of the same server (a
real TCP relay), each learning of a snapshot from the store's pointer (`latest`). Under
the store's faults every replica keeps answering from its last good index, and once
the store is sound again every loss the signer acknowledged is answered REVOKED by
every replica and through the balancer. Timings are printed, never asserted: every
wait has a generous deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jpki_va.bench.fleet import Fleet, FleetSpec
from jpki_va.core.domain import CertKind
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2, va_pb2_grpc
from jpki_va.server.app.signer_app import SignerApp
from tests.support import (
    Issued,
    check_request,
    fresh_key,
    issue_through,
    record_loss,
    wait_for,
)
from tests.support.seaweed import FaultProxy, Seaweed, seaweed_server

pytestmark = pytest.mark.slow

BUCKET = "jpki-va-fleet"
STORE = f"s3://{BUCKET}/va"
RESTARTED = 1  # the replica killed while the store is down


@dataclass
class World:
    seaweed: Seaweed
    proxy: FaultProxy
    signer: SignerApp
    stub: signer_pb2_grpc.SignerServiceStub
    fleet: Fleet
    lost: list[Issued] = field(default_factory=list)  # every loss the signer acknowledged

    def issue_known_everywhere(self) -> Issued:
        issued = issue_through(self.stub, CertKind.CARD_AUTH, key=fresh_key())
        for replica in self.fleet.replicas:
            _wait_status(self.fleet, replica.target, issued, va_pb2.CERT_STATUS_GOOD)
        return issued

    def lose(self, issued: Issued) -> None:
        record_loss(self.stub, issued.kind, issued.serial)
        self.lost.append(issued)

    def assert_every_loss_revoked_everywhere(self) -> None:
        targets = [r.target for r in self.fleet.replicas] + [self.fleet.grpc_target]
        for target in targets:
            for issued in self.lost:
                _wait_status(self.fleet, target, issued, va_pb2.CERT_STATUS_REVOKED)


def _status(fleet: Fleet, target: str, issued: Issued) -> int:
    """The status `target` answers the fleet's caller (-1: no answer)."""
    with fleet.channel(target) as channel:
        try:
            reply = va_pb2_grpc.StatusServiceStub(channel).Check(
                check_request(issued.kind, issued.serial), timeout=5
            )
        except grpc.RpcError:
            return -1
    return int(reply.status.status)


def _wait_status(fleet: Fleet, target: str, issued: Issued, status: int) -> None:
    wait_for(
        lambda: _status(fleet, target, issued) == status,
        f"{target} to answer {status} for serial {issued.serial}",
        60,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("fleet-s3")
    with seaweed_server(directory / "weed") as seaweed:
        seaweed.client().create_bucket(Bucket=BUCKET)
        proxy = FaultProxy(seaweed.http_port)
        signer = seaweed.start_signer(
            directory / "signer", softhsm_token, STORE, delta_interval=1.0, bootstrap=True
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{signer.port}")
        try:
            stub = signer_pb2_grpc.SignerServiceStub(channel)
            root = x509.load_der_x509_certificate(
                stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=30).root_certificate_der
            )
            root_file = directory / "root.pem"
            root_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
            stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=60)
            fleet = Fleet(
                directory / "fleet",
                signer.config.snapshot_dir,  # not read: the replicas stage from the store
                root_file,
                f"127.0.0.1:{signer.port}",
                FleetSpec(
                    replicas=3,
                    max_lag=2.0,
                    store=STORE,
                    # Read-only credentials, through the fault proxy, which each
                    # replica's namespace reaches on its own loopback.
                    store_env=seaweed.env(writer=False, endpoint=proxy.endpoint),
                    loopback_ports=(proxy.port,),
                ),
            )
            fleet.start()
            print(f"fleet: {fleet.placement}")
            try:
                yield World(seaweed, proxy, signer, stub, fleet)
            finally:
                fleet.close()
        finally:
            proxy.close()
            channel.close()
            signer.stop()


def test_every_replica_answers_a_loss_through_the_store(world: World) -> None:
    """Registry commit → REVOKED on every replica, each through the bucket."""
    samples: dict[int, list[float]] = {r.number: [] for r in world.fleet.replicas}
    rng = random.Random(13)
    for _ in range(3):
        issued = world.issue_known_everywhere()
        time.sleep(rng.uniform(0, 1.0))  # any phase of the signer's delta tick
        sent = time.monotonic()
        world.lose(issued)
        waiting = {r.number: r.target for r in world.fleet.replicas}
        while waiting and time.monotonic() < sent + 30:
            for number, target in list(waiting.items()):
                if _status(world.fleet, target, issued) == va_pb2.CERT_STATUS_REVOKED:
                    samples[number].append(time.monotonic() - sent)
                    del waiting[number]
            time.sleep(0.01)
        assert not waiting, f"replicas {sorted(waiting)} never answered the loss"
        assert _status(world.fleet, world.fleet.grpc_target, issued) == va_pb2.CERT_STATUS_REVOKED
    print({n: [round(s, 2) for s in v] for n, v in samples.items()})
    for replica in world.fleet.replicas:  # each fetched from the store itself
        assert "fetched snapshot" in world.fleet.log_tail(replica.number, 200_000)


def test_store_faults_lose_no_acknowledged_loss(world: World) -> None:
    """The store unreachable, then listing but failing on get, with a replica killed
    meanwhile: the replicas answer from their last good index throughout; once the
    store is back, the restarted one rejoins and every loss is REVOKED everywhere."""
    fleet = world.fleet
    during = [world.issue_known_everywhere() for _ in range(2)]
    world.proxy.set_mode("refuse")
    try:
        world.lose(during[0])
        fleet.kill(RESTARTED)
        time.sleep(2.5)  # deltas published meanwhile, unseen by the replicas
        world.proxy.set_mode("fail-get")
        world.lose(during[1])
        wait_for(lambda: world.proxy.refused_gets > 0, "a replica's get refused", 30)
        for replica in fleet.replicas:
            if replica.number == RESTARTED:
                continue
            for issued in during:  # the last good index still answers
                assert _status(fleet, replica.target, issued) == va_pb2.CERT_STATUS_GOOD
    finally:
        world.proxy.set_mode("pass")
    fleet.start_replica(RESTARTED)
    world.assert_every_loss_revoked_everywhere()
