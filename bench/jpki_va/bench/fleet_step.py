"""The bench's fleet step: throughput through the balancer against one replica direct,
registry commit to answer on every replica, and the failover blip.

Three replicas (`--fleet-replicas`) of one worker each over the data set's snapshot
directory, behind Envoy; the signer is the bench's own (RunningVa). Bounded: a fixed
count of freshness samples and failover seconds, every wait with a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
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
from jpki_va.server.snapshot.manifest import MANIFEST, snapshot_dirname, snapshot_sequence

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


@dataclass(frozen=True)
class Publishing:
    """Where the bench's own signer commits snapshots, and its registry's last loss
    event: to time the stages of a loss's way from the outside."""

    snapshots: Path
    last_event: Callable[[], int]


def _newest(snapshots: Path) -> int:
    found = (snapshot_sequence(p) for p in snapshots.iterdir())
    return max((s for s in found if s is not None), default=0)


def _carrying(snapshots: Path, after: int, event: int) -> tuple[int, float] | None:
    """The first committed snapshot above `after` whose manifest reaches loss event
    `event`: its sequence and when its publish began (the manifest's created_at)."""
    for sequence in range(after + 1, _newest(snapshots) + 1):
        try:
            manifest = json.loads((snapshots / snapshot_dirname(sequence) / MANIFEST).read_bytes())
        except (OSError, ValueError):
            continue  # withdrawn, or not one of the signer's
        if int(manifest.get("event_sequence", 0)) >= event:
            return sequence, datetime.fromisoformat(manifest["created_at"]).timestamp()
    return None


def _summary(samples: dict[Any, list[float]]) -> dict[str, dict[Any, float | None]]:
    return {
        "p50_seconds": {n: percentile(s, 50) for n, s in samples.items()},
        "p99_seconds": {n: percentile(s, 99) for n, s in samples.items()},
        "max_seconds": {n: round(max(s), 3) if s else None for n, s in samples.items()},
    }


def _answered(
    stub: va_pb2_grpc.StatusServiceStub,
    request: va_pb2.CheckRequest,
    deadline: float,
    calls: list[float],
) -> float | None:
    """When (wall clock) `stub` first answered REVOKED, asked every 5 ms; None: never.
    Each call's seconds go to `calls`: a slow call delays the figure by up to its length.
    """
    while time.time() < deadline:
        began = time.time()
        revoked = _revoked(stub, request)
        ended = time.time()
        calls.append(ended - began)
        if revoked:
            return ended
        time.sleep(0.005)
    return None


def fleet_freshness(
    fleet: Fleet,
    record_loss: Callable[[int], None],
    request_for: Callable[[int], va_pb2.CheckRequest],
    serials: list[int],
    publishing: Publishing,
) -> dict[str, Any]:
    """Per loss: seconds from sending RecordLoss to REVOKED on each replica, directly
    (each replica asked by a thread of its own, so a slow answer from one does not
    delay the others' figures); and the stages of that way: the registry commit
    (RecordLoss answered), the wait for the signer's publish to begin, the publish
    (gather, sign, commit), and each replica's part (learning of the snapshot,
    verifying and applying it, answering: from its commit to REVOKED).

    Wall-clock times throughout: the manifest's created_at is the signer's, on this host.
    """
    channels = {r.number: fleet.channel(r.target) for r in fleet.replicas}
    stubs = {n: va_pb2_grpc.StatusServiceStub(c) for n, c in channels.items()}
    samples: dict[int, list[float]] = {n: [] for n in stubs}
    calls: dict[int, list[float]] = {n: [] for n in stubs}
    stages: dict[str, list[float]] = {
        "commit": [],
        "wait_for_publish": [],
        "publish": [],
        **{f"replica_{n}": [] for n in stubs},
    }
    try:
        with ThreadPoolExecutor(len(stubs), thread_name_prefix="freshness") as pool:
            for i, serial in enumerate(serials):
                time.sleep((i * 0.37) % 1.0)  # spread over the phase of the delta tick
                request = request_for(serial)
                before = _newest(publishing.snapshots)
                sent = time.time()
                deadline = sent + FRESHNESS_TIMEOUT
                record_loss(serial)
                acked = time.time()
                answers = {
                    n: pool.submit(_answered, stub, request, deadline, calls[n])
                    for n, stub in stubs.items()
                }
                event = publishing.last_event()
                carrying, committed = None, 0.0
                while carrying is None and time.time() < deadline:
                    carrying = _carrying(publishing.snapshots, before, event)
                    committed = time.time()
                    time.sleep(0.005)
                late = sorted(n for n, answer in answers.items() if answer.result() is None)
                if late or carrying is None:
                    raise TimeoutError(f"no snapshot carried the loss, or {late} never answered")
                for n, answer in answers.items():
                    at = answer.result()
                    assert at is not None
                    samples[n].append(at - sent)
                    stages[f"replica_{n}"].append(at - committed)
                stages["commit"].append(acked - sent)
                stages["wait_for_publish"].append(max(0.0, carrying[1] - acked))
                stages["publish"].append(committed - max(carrying[1], acked))
    finally:
        for channel in channels.values():
            channel.close()
    return {
        "samples": len(serials),
        **_summary(samples),
        # The promise is per replica: the slowest replica's p99.
        "p99_worst_replica_seconds": max(percentile(s, 99) or 0.0 for s in samples.values()),
        "stages": _summary(stages),
        # How long one Check took on each replica while it was asked every 5 ms.
        "check_call": {"calls": {n: len(c) for n, c in calls.items()}, **_summary(calls)},
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
        # The steady state, as the single responder's: each replica's producer gets a
        # whole CPU for its first pass, and the step waits for it (the wait recorded).
        FleetSpec(
            replicas=settings.fleet_replicas,
            preproduce=settings.ocsp_preproduce,
            preproduce_share=1.0,
            wait_preproduced=True,
        ),
    )
    progress(
        f"fleet: {settings.fleet_replicas} replicas build their indexes"
        f"{' and pre-produce OCSP responses' if settings.ocsp_preproduce else ''}, then Envoy"
    )
    fleet.start()
    progress(f"fleet: replicas on {fleet.placement}")
    out: dict[str, Any] = {
        "replicas": settings.fleet_replicas,
        "workers_per_replica": 1,
        "placement": fleet.placement,
        "preproduce_wait_seconds": fleet.preproduce_wait_seconds,
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
            Publishing(ds.snapshot_dir, va.last_event),
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
