"""The bench's fleet step: throughput through the balancer against one replica direct,
registry commit to answer on every replica, and the failover blip.

Three replicas (`--fleet-replicas`) of one worker each over the data set's snapshot
directory, behind Envoy; the signer is the bench's own (RunningVa). Bounded: a fixed
count of freshness samples and failover seconds, every wait with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509

from jpki_va.bench.fleet import (
    Fleet,
    FleetSpec,
    LoadTally,
    grpc_load,
    http_ocsp_load,
    percentile,
)
from jpki_va.bench.loadgen import LoadSpec, build_payloads, run_load
from jpki_va.core.domain import CertKind, Status
from jpki_va.protos import signer_pb2_grpc, va_pb2, va_pb2_grpc
from jpki_va.server.app.envoy_config import GRPC_CLUSTER

if TYPE_CHECKING:
    from jpki_va.bench.dataset import DataSet
    from jpki_va.bench.suite import RunningVa, SuiteSettings

FRESHNESS_TIMEOUT = 60.0  # seconds for one loss to reach every replica


def _revoked(stub: va_pb2_grpc.StatusServiceStub, request: va_pb2.CheckRequest) -> bool:
    try:
        reply = stub.Check(request, timeout=5)
    except grpc.RpcError:
        return False
    return Status(reply.status.status) is Status.REVOKED


def fleet_freshness(
    fleet: Fleet,
    record_loss: Callable[[int], None],
    request_for: Callable[[int], va_pb2.CheckRequest],
    serials: list[int],
) -> dict[str, Any]:
    """Per loss: seconds from sending RecordLoss to REVOKED on each replica, directly."""
    channels = [fleet.channel(r.target) for r in fleet.replicas]
    stubs = [va_pb2_grpc.StatusServiceStub(c) for c in channels]
    samples: dict[int, list[float]] = {r.number: [] for r in fleet.replicas}
    try:
        for i, serial in enumerate(serials):
            time.sleep((i * 0.37) % 1.0)  # spread over the phase of the delta tick
            request = request_for(serial)
            sent = time.monotonic()
            record_loss(serial)
            waiting = set(samples)
            while waiting and time.monotonic() - sent < FRESHNESS_TIMEOUT:
                for number in sorted(waiting):
                    if _revoked(stubs[number], request):
                        samples[number].append(time.monotonic() - sent)
                        waiting.discard(number)
                time.sleep(0.005)
            if waiting:
                raise TimeoutError(f"replicas {sorted(waiting)} never answered a loss")
    finally:
        for channel in channels:
            channel.close()
    return {
        "samples": len(serials),
        "p50_seconds": {n: percentile(s, 50) for n, s in samples.items()},
        "p99_seconds": {n: percentile(s, 99) for n, s in samples.items()},
        "max_seconds": {n: round(max(s), 3) for n, s in samples.items()},
        # The promise is per replica: the slowest replica's p99.
        "p99_worst_replica_seconds": max(percentile(s, 99) or 0.0 for s in samples.values()),
    }


def failover(fleet: Fleet, check: bytes, ocsp_der: bytes, seconds: float) -> dict[str, Any]:
    """Steady gRPC and HTTP OCSP load through Envoy; replica 0 SIGKILLed a third of the
    way in, restarted at once; failed calls (the client has no retry policy) and the
    calls Envoy retried on another replica, counted."""
    grpc_tally, http_tally = LoadTally(), LoadTally()
    stop = threading.Event()

    def balancer() -> grpc.Channel:
        return fleet.channel(fleet.grpc_target)

    threads = [
        threading.Thread(target=grpc_load, args=(balancer, check, stop, grpc_tally)),
        threading.Thread(target=grpc_load, args=(balancer, check, stop, grpc_tally)),
        threading.Thread(
            target=http_ocsp_load,
            args=(fleet.http_url, ocsp_der, stop, http_tally),
            kwargs={"context": fleet.ssl_context()},
        ),
    ]
    retried_before = fleet.retried()
    began = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(seconds / 3)
        fleet.kill(0)
        killed = time.monotonic()
        fleet.start_replica(0)
        serving = time.monotonic()
        target = fleet.replicas[0].target
        deadline = time.monotonic() + 30
        while not fleet.envoy_healthy(GRPC_CLUSTER).get(target):
            if time.monotonic() > deadline:
                raise TimeoutError("the balancer did not take the restarted replica back")
            time.sleep(0.05)
        rejoined = time.monotonic()
        time.sleep(max(0.0, began + seconds - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    retried = fleet.retried()
    return {
        "seconds": round(time.monotonic() - began, 1),
        "grpc": grpc_tally.to_json(),
        "http_ocsp": http_tally.to_json(),
        "retried_by_envoy": {k: v - retried_before[k] for k, v in retried.items()},
        "restart_to_serving_seconds": round(serving - killed, 3),
        "restart_to_rejoined_seconds": round(rejoined - killed, 3),
        "retry_by": "the balancer (Envoy retry_policy, another replica each time)",
    }


@dataclass(frozen=True)
class SuiteParts:
    """What the fleet step borrows from the suite, handed in (the suite imports this)."""

    check_request: Callable[[CertKind, int], va_pb2.CheckRequest]
    good_serials: Callable[[va_pb2_grpc.StatusServiceStub, DataSet, CertKind, int], list[int]]
    issuers: Callable[[DataSet], dict[CertKind, x509.Certificate]]
    record_loss: Callable[[signer_pb2_grpc.SignerServiceStub, CertKind, int], None]


def fleet_figures(
    ds: DataSet,
    va: RunningVa,
    settings: SuiteSettings,
    progress: Callable[[str], None],
    parts: SuiteParts,
) -> dict[str, Any]:
    directory = ds.root / "fleet"
    directory.mkdir(exist_ok=True)
    fleet = Fleet(
        directory,
        ds.snapshot_dir,
        ds.root_pem,
        f"127.0.0.1:{va.signer.port}",
        FleetSpec(replicas=settings.fleet_replicas),
    )
    progress(f"fleet: {settings.fleet_replicas} replicas build their indexes, then Envoy")
    fleet.start()
    progress(f"fleet: replicas on {fleet.placement}")
    out: dict[str, Any] = {
        "replicas": settings.fleet_replicas,
        "workers_per_replica": 1,
        "placement": fleet.placement,
        "tls": "verifiers' mTLS ends at Envoy; TLS from Envoy to each replica",
    }
    try:
        pool = ds.pool()
        payloads = build_payloads("check", pool, settings.mix, parts.issuers(ds), count=20_000)
        for name, target in (
            ("balancer", fleet.grpc_target),
            ("one_replica", fleet.replicas[0].target),
        ):
            progress(f"fleet: gRPC Check -> {name}")
            spec = LoadSpec(
                target=target,
                interface="check",
                duration=settings.duration,
                processes=settings.processes,
                concurrency=settings.concurrency,
                channels=settings.channels,
                tls=fleet.client_tls(target),
            )
            out[name] = run_load(f"fleet {name}", spec, payloads).to_json()
        kind = CertKind.CARD_AUTH
        status = va.status_stub()
        serials = parts.good_serials(status, ds, kind, settings.fleet_samples + 1)
        if len(serials) < settings.fleet_samples + 1:
            raise RuntimeError(f"only {len(serials)} good {kind.name} serials left in the pool")
        signer = va.signer_stub()
        progress(f"fleet: commit to answer on every replica, {settings.fleet_samples} losses")
        out["freshness"] = fleet_freshness(
            fleet,
            lambda serial: parts.record_loss(signer, kind, serial),
            lambda serial: parts.check_request(kind, serial),
            serials[: settings.fleet_samples],
        )
        progress("fleet: SIGKILL of a replica under load")
        good = serials[-1]
        check = parts.check_request(kind, good).SerializeToString()
        ocsp_der = build_payloads("ocsp", pool, settings.mix, parts.issuers(ds), count=1)[0]
        ocsp_der = va_pb2.OcspRequest.FromString(ocsp_der).der
        out["failover"] = failover(fleet, check, ocsp_der, settings.failover_seconds)
    finally:
        fleet.close()
    return out
