"""The cost ladder: what each layer of the responder adds over the trivial server.

The trivial server (bench/trivial.py) answers canned messages; the responder answers
from the index behind interceptors, health, reflection, the caller's identity, the
entitlement gate and the provision ledger. The gap between them is the sum of those
layers, and a figure for the gap says nothing about which layer to work on. So the
ladder climbs from one to the other a layer at a time, each rung a server of its own
on the same gRPC server, the same worker count and the same client:

    trivial              canned answers, a bare grpc.server
    interceptors         + the responder's interceptors (stream limiter, metrics,
                           error mapping, request decoding) and its worker trailer
    health+reflection    + grpc.health.v1 and server reflection registered
    identity+gate        + the caller's identity, the verifier table, the entitlement
                           (a stream batch's items read from its bytes, as the
                           responder reads the usual batch)
    ledger               + the provision counted in the ledger (its counter cell, 第41条)
    lookup               + the status looked up in the index (answer still canned; a
                           unary Check and a stream batch read their index values
                           undecoded, as the responder does)
    jpki-va              the real responder: the lookup's answer encoded (a stream
                           batch's values decoded and encoded by compiled code) (measured
                           by the caller, suite.py, on the running responder)

Every rung uses the responder's own pieces (server_common, the interceptors, Gate,
the ledger shard, IndexStatusSource) opened on the data set's index; only the servicer
here is the harness's, so that each layer can be switched on alone.
"""

from __future__ import annotations

import functools
import multiprocessing
import signal
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import grpc

from jpki_va.bench.calls import Worker, free_port
from jpki_va.bench.trivial import TrivialServer
from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind, Provision, micros, parse_record_key, record_key
from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.access.gate import Gate
from jpki_va.server.app.responder_app import STATUS_ERRORS
from jpki_va.server.app.signals import stop_on_signals
from jpki_va.server.law.entitlements import status_provision
from jpki_va.server.ledger.provisions import open_shard
from jpki_va.server.responder.metrics import WorkerMetrics
from jpki_va.server.responder.status import (
    IndexHolder,
    IndexStatusSource,
    IssuerCompromiseSource,
)
from jpki_va.server.rpc import server_common
from jpki_va.server.rpc.batch_wire import plain_keys
from jpki_va.server.rpc.identity import caller_function, stream_owner
from jpki_va.server.rpc.metrics_interceptor import MetricsInterceptor
from jpki_va.server.rpc.pb import plain_kind_serial
from jpki_va.server.rpc.stream_budget import StreamBudget, StreamLimiter

#: The rungs this module serves, lowest first; the real responder is the last rung.
RUNGS = ("trivial", "interceptors", "health+reflection", "identity+gate", "ledger", "lookup")
TOP = "jpki-va"
_SERVICES = (va_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,)


@dataclass(frozen=True)
class _Layers:
    """What the servicer does beyond answering canned bytes."""

    identity: bool
    ledger: bool
    lookup: bool

    @classmethod
    def of(cls, rung: str) -> _Layers:
        level = RUNGS.index(rung)
        return cls(
            identity=level >= RUNGS.index("identity+gate"),
            ledger=level >= RUNGS.index("ledger"),
            lookup=level >= RUNGS.index("lookup"),
        )


class LadderServicer(va_pb2_grpc.StatusServiceServicer):
    """StatusService with the responder's layers switched on up to one rung."""

    def __init__(
        self,
        layers: _Layers,
        check: bytes,
        ocsp_der: bytes,
        gate: Gate | None,
        caller: Callable[[grpc.ServicerContext], Any],
        source: IssuerCompromiseSource | None,
    ) -> None:
        self._layers = layers
        self._check = va_pb2.CheckResponse.FromString(check)
        self._result = va_pb2.CheckResult(status=self._check.status)
        self._ocsp = va_pb2.OcspResponse(der=ocsp_der)
        self._gate = gate
        self._caller = caller
        self._source = source
        self._clock = SystemClock()

    def _admit(self, context: grpc.ServicerContext, requests: list[va_pb2.CheckRequest]) -> None:
        """The layers below the encoding for these requests, as the responder runs them:
        one identity per call or batch, one entitlement per kind, one lookup per batch."""
        if self._gate is None:
            return
        verifier = self._gate.identify(self._caller(context))
        counts: Counter[Provision] = Counter()
        entitled: dict[CertKind, Provision] = {}
        now = self._clock.now()
        targets = []
        for request in requests:
            kind, serial = plain_kind_serial(request)
            provision = entitled.get(kind)
            if provision is None:
                provision = entitled[kind] = status_provision(kind)
                self._gate.check(verifier, provision)
            counts[provision] += 1
            targets.append((kind, serial, now))
        if self._source is not None:
            if len(targets) == 1:
                self._source.status(*targets[0])
            elif (
                self._source.packed(  # a batch: its index values, as the responder reads
                    [record_key(kind, serial) for kind, serial, _ in targets], micros(now)
                )
                is None
            ):  # (a compromise announced: the responder reads briefs)
                self._source.briefs(targets)
        if self._layers.ledger:
            self._gate.provided(verifier, counts)

    def _admit_batch(self, context: grpc.ServicerContext, batch: va_pb2.CheckBatchRequest) -> None:
        """`_admit` for a stream batch read as the responder reads the usual one: its
        keys from its bytes (rpc/batch_wire.plain_keys), one entitlement per kind, one
        read of its values (status_servicer.StatusServicer._plain_batch).

        The responder reads the keys from the wire bytes and never parses the usual
        batch (batch_wire.batch_request). Every rung has the parsed batch, as the
        trivial server does, so this rung serializes it again to read its keys: one
        serialize per batch more than the responder (about 4 µs per 100 requests)."""
        if self._gate is None:
            return
        plain = plain_keys(batch.SerializeToString())
        if plain is None:
            self._admit(context, list(batch.requests))
            return
        verifier = self._gate.identify(self._caller(context))
        keys, per_kind = plain
        counts: Counter[Provision] = Counter()
        for kind in CertKind:
            if per_kind[kind]:
                provision = status_provision(kind)
                self._gate.check(verifier, provision)
                counts[provision] += per_kind[kind]
        if self._source is not None:
            now = self._clock.now()
            if self._source.packed(keys, micros(now)) is None:  # a compromise announced
                self._source.briefs([(*parse_record_key(key), now) for key in keys])
        if self._layers.ledger:
            self._gate.provided(verifier, counts)

    def Check(self, request: va_pb2.CheckRequest, context: grpc.ServicerContext) -> Any:
        # As StatusServicer.Check: one identity, one entitlement, one lookup, one count.
        gate = self._gate
        if gate is None:
            return self._check
        verifier = gate.identify(self._caller(context))
        kind, serial = plain_kind_serial(request)
        provision = status_provision(kind)
        gate.check(verifier, provision)
        if self._source is not None:
            now = self._clock.now()
            # As the responder reads the usual request: its index value, undecoded.
            if self._source.packed([record_key(kind, serial)], micros(now)) is None:
                self._source.status(kind, serial, now)  # a compromise announced
        if self._layers.ledger:
            gate.provided_one(verifier, provision)
        return self._check

    def CheckStream(
        self, request_iterator: Iterator[va_pb2.CheckBatchRequest], context: grpc.ServicerContext
    ) -> Iterator[va_pb2.CheckBatchResponse]:
        for batch in request_iterator:
            self._admit_batch(context, batch)
            yield va_pb2.CheckBatchResponse(results=[self._result] * len(batch.requests))

    def Ocsp(self, request: va_pb2.OcspRequest, context: grpc.ServicerContext) -> Any:
        if self._gate is not None:
            verifier = self._gate.identify(self._caller(context))
            if self._layers.ledger:  # as the responder counts a one-CertID request
                self._gate.provided_one(verifier, Provision.SIGNING_STATUS)
        return self._ocsp

    def ListIssuers(
        self, request: va_pb2.ListIssuersRequest, context: grpc.ServicerContext
    ) -> va_pb2.ListIssuersResponse:
        return va_pb2.ListIssuersResponse()


@dataclass(frozen=True)
class RungSpec:
    """What a rung's worker needs: the index to read and whom plaintext calls are."""

    index_root: str
    verifier: str
    threads: int


def _server(rung: str, spec: RungSpec) -> grpc.Server:
    if rung == "trivial":
        return grpc.server(
            futures.ThreadPoolExecutor(max_workers=spec.threads),
            options=[("grpc.so_reuseport", 1)],
        )
    metrics = WorkerMetrics()
    limiter = StreamLimiter(
        StreamBudget(),
        functools.partial(stream_owner, insecure_loopback=True),
        lambda method, code: metrics.grpc_call(method, code, 0.0),
    )
    server = server_common.build_server(
        max_workers=spec.threads,
        mapping=STATUS_ERRORS,
        options=[("grpc.so_reuseport", 1)],
        served_by="ladder",
        interceptors=[limiter, MetricsInterceptor(metrics)],
    )
    if RUNGS.index(rung) >= RUNGS.index("health+reflection"):
        health = server_common.add_health_and_reflection(server, _SERVICES)
        server_common.set_serving(health, _SERVICES, True)
    return server


def _worker(
    rung: str,
    slot: int,
    port: int,
    spec: RungSpec,
    check: bytes,
    ocsp_der: bytes,
    ready: Any,
    stop: ProcessEvent,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_on_signals(stop, (signal.SIGTERM,))  # set by a thread: no lock in the handler
    layers = _Layers.of(rung)
    holder = IndexHolder(Path(spec.index_root))
    holder.refresh()
    with tempfile.TemporaryDirectory(prefix="ladder-ledger-") as ledger_dir:
        ledger = open_shard(Path(ledger_dir), slot)
        gate = (
            Gate(lambda: holder.get().verifiers, ledger, SystemClock()) if layers.identity else None
        )
        caller = caller_function(insecure_loopback=True, default_verifier=spec.verifier)
        # The responder's own source (app/responder_app.py), without its metrics.
        source = (
            IssuerCompromiseSource(IndexStatusSource(holder), holder) if layers.lookup else None
        )
        server = _server(rung, spec)
        va_pb2_grpc.add_StatusServiceServicer_to_server(
            LadderServicer(layers, check, ocsp_der, gate, caller, source), server
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        ready.put(port)
        stop.wait()
        server.stop(1).wait()
        ledger.close()
    holder.close()


def _known(rung: str) -> None:
    if rung not in RUNGS:
        raise ValueError(f"unknown rung {rung!r}; the rungs are {', '.join(RUNGS)}")


def rung_worker(rung: str, spec: RungSpec, check: bytes, ocsp_der: bytes) -> Worker:
    """One worker of `rung`, as the calls and instructions steps start one (ledger
    shard 0 in a directory of its own)."""
    _known(rung)
    return lambda port, ready, stop: (
        _worker,
        (rung, 0, port, spec, check, ocsp_der, ready, stop),
    )


def start_rung(
    rung: str, workers: int, spec: RungSpec, check: bytes, ocsp_der: bytes
) -> TrivialServer:
    """Start `workers` processes of one rung on a free loopback port; returns when all listen."""
    _known(rung)
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    stop = ctx.Event()
    procs: list[multiprocessing.process.BaseProcess] = [
        ctx.Process(
            target=_worker,
            args=(rung, slot, port, spec, check, ocsp_der, ready, stop),
            name=f"bench-ladder-{rung}",
        )
        for slot in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
    except Exception:
        TrivialServer(port, procs, stop).stop()
        raise
    return TrivialServer(port, procs, stop)
