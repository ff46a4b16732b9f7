"""gRPC load: several client processes, each with grpc.aio channels and many calls in flight.

Python clients are slow, so the load stays cheap per call: requests are serialized
once ahead of time and sent as bytes through generic method handles (no protobuf
work on the hot path); every 64th response is decoded to count statuses and
in-band errors. Each process opens its own connections (a local subchannel pool),
so the kernel spreads them over the server's SO_REUSEPORT workers.

Closed loop: `concurrency` calls in flight per process. Open loop: calls start on
a fixed schedule at `rate` per second in total and latency counts from the
scheduled start (no coordinated omission); calls that would exceed the in-flight
cap are counted as `dropped`. Both stop after `duration` seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import multiprocessing
import os
import resource
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np
from cryptography import x509
from cryptography.x509 import ocsp

from jpki_va.bench.dataset import Pool
from jpki_va.bench.mix import Mix, draw_sequence
from jpki_va.client._ocsp import build_request
from jpki_va.core.domain import CertKind, Status, serial_to_bytes
from jpki_va.protos import va_pb2

Interface = Literal["check", "stream", "ocsp"]
INTERFACES: tuple[Interface, ...] = ("check", "stream", "ocsp")
_METHODS = {
    "check": "/jpki.va.v1.StatusService/Check",
    "stream": "/jpki.va.v1.StatusService/CheckStream",
    "ocsp": "/jpki.va.v1.StatusService/Ocsp",
}
# grpc-stubs' aio types lag the runtime API (generic calls without serializers, EOF):
# channels are typed loosely here and nowhere else.
AioChannel = Any
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
SAMPLE_EVERY = 64
START_DELAY = 0.2  # from "every client is connected" to the common start


@dataclass(frozen=True)
class ClientTls:
    """mTLS for the load (PEM files): the fleet's balancer and replicas speak only TLS."""

    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None  # what the server's certificate names, if not the host

    def credentials(self) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]]]:
        credentials = grpc.ssl_channel_credentials(
            self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()
        )
        name = (
            []
            if self.server_name is None
            else [("grpc.ssl_target_name_override", self.server_name)]
        )
        return credentials, name


def _own_host(host: str, tls: ClientTls | None) -> bool:
    """Loopback; or, over mTLS, a private address (the fleet's own namespaces)."""
    if host in ("127.0.0.1", "localhost", "[::1]"):
        return True
    try:
        return tls is not None and ipaddress.ip_address(host.strip("[]")).is_private
    except ValueError:
        return False


@dataclass(frozen=True)
class LoadSpec:
    target: str  # HOST:PORT, loopback only (or, with `tls`, a private address)
    interface: Interface
    duration: float = 5.0
    warmup: float = 0.5
    processes: int = 2
    concurrency: int = 32  # calls (or streams) in flight per process
    channels: int = 4  # connections per process
    rate: float | None = None  # open loop: total calls per second
    batch: int = 100  # certificates per CheckStream batch
    timeout: float = 10.0
    tls: ClientTls | None = None

    def __post_init__(self) -> None:
        host = self.target.rsplit(":", 1)[0]
        if not _own_host(host, self.tls):
            raise ValueError(
                f"load goes to loopback (or, over mTLS, a private address) only, "
                f"not {self.target!r}"
            )
        if self.interface not in INTERFACES:
            raise ValueError(f"unknown interface {self.interface!r}")
        if not 0 < self.duration <= 3600:
            raise ValueError("duration must be in (0, 3600] seconds")
        if self.processes < 1 or self.concurrency < 1 or self.channels < 1 or self.batch < 1:
            raise ValueError("processes, concurrency, channels and batch must be >= 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")


@dataclass
class LoadResult:
    label: str
    spec: dict[str, Any]
    calls: int  # completed calls in the measured window
    items: int  # statuses answered (calls x batch for CheckStream)
    errors: dict[str, int]
    dropped: int
    seconds: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]  # from sampled responses
    client_cpu_seconds: float
    server_cpu_seconds: float | None = None
    server_cpu_seconds_by_process: list[float] = field(default_factory=list)
    # (voluntary, involuntary) context switches of the servers' threads in the window
    server_switches: tuple[int, int] | None = None
    server_major_faults: int | None = None  # page faults read from disk, in the window
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values()) + self.dropped

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rate"] = round(self.rate, 1)
        data["calls_per_second"] = round(self.calls / self.seconds, 1) if self.seconds else 0.0
        data["error_count"] = self.error_count
        if self.server_cpu_seconds is not None and self.items:
            data["server_cpu_us_per_item"] = round(1e6 * self.server_cpu_seconds / self.items, 2)
        if self.server_switches is not None and self.items:
            voluntary, involuntary = self.server_switches
            data["server_switches_per_item"] = {
                "voluntary": round(voluntary / self.items, 3),
                "involuntary": round(involuntary / self.items, 3),
            }
        if self.server_major_faults is not None and self.items:
            data["server_major_faults_per_item"] = round(self.server_major_faults / self.items, 4)
        return data


def build_payloads(
    interface: Interface,
    pool: Pool,
    mix: Mix,
    issuers: dict[CertKind, x509.Certificate],
    *,
    count: int = 20_000,
    batch: int = 100,
    seed: int = 7,
) -> list[bytes]:
    """Serialized request messages for the interface, drawn from the mix."""
    rng = np.random.default_rng(seed)
    draws = draw_sequence(pool, mix, count * (batch if interface == "stream" else 1), rng)
    if interface == "ocsp":
        return [
            va_pb2.OcspRequest(
                der=build_request(issuer=issuers[kind], serial=serial)
            ).SerializeToString()
            for kind, serial, _ in draws
        ]
    checks = [
        va_pb2.CheckRequest(
            cert=va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(
                    kind=int(kind),  # type: ignore[arg-type]
                    serial=serial_to_bytes(serial),
                )
            )
        )
        for kind, serial, _ in draws
    ]
    if interface == "check":
        return [c.SerializeToString() for c in checks]
    return [
        va_pb2.CheckBatchRequest(requests=checks[i : i + batch]).SerializeToString()
        for i in range(0, len(checks), batch)
    ]


class _Recorder:
    def __init__(self, interface: Interface, window: tuple[float, float]) -> None:
        self.interface = interface
        self.start, self.end = window
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.dropped = 0
        self._n = 0

    def done(self, began: float, ended: float, response: bytes) -> None:
        if began < self.start or ended > self.end:
            return
        self.latencies.append(ended - began)
        self._n += 1
        if self._n % SAMPLE_EVERY == 0:
            self._sample(response)

    def failed(self, began: float, code: str) -> None:
        if self.start <= began <= self.end:
            self.errors[code] += 1

    def _sample(self, response: bytes) -> None:
        if self.interface == "check":
            status = va_pb2.CheckResponse.FromString(response).status.status
            self.statuses[Status(status).name] += 1
        elif self.interface == "stream":
            for result in va_pb2.CheckBatchResponse.FromString(response).results:
                if result.HasField("error"):
                    self.errors["in-band error"] += 1
                else:
                    self.statuses[Status(result.status.status).name] += 1
        else:
            der = va_pb2.OcspResponse.FromString(response).der
            parsed = ocsp.load_der_ocsp_response(der)
            if parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                self.statuses[parsed.certificate_status.name] += 1
            else:
                self.errors[f"ocsp {parsed.response_status.name}"] += 1


async def _run_client(
    spec: LoadSpec, payloads: Sequence[bytes], offset: int, start: _Start
) -> _Recorder:
    options = [("grpc.use_local_subchannel_pool", 1)]
    if spec.tls is None:
        channels = [
            grpc.aio.insecure_channel(spec.target, options=options) for _ in range(spec.channels)
        ]
    else:
        credentials, name = spec.tls.credentials()
        channels = [
            grpc.aio.secure_channel(spec.target, credentials, options=options + name)
            for _ in range(spec.channels)
        ]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=spec.timeout)
        start_at = await asyncio.to_thread(start.wait)
        begin_window = start_at + spec.warmup
        end_window = begin_window + spec.duration
        recorder = _Recorder(spec.interface, (begin_window, end_window))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        n = len(payloads)
        counter = [offset]

        def next_payload() -> bytes:
            counter[0] += 1
            return payloads[counter[0] % n]

        if spec.interface == "stream":
            workers = [
                _stream_worker(
                    channels[i % len(channels)], spec, next_payload, recorder, end_window
                )
                for i in range(spec.concurrency)
            ]
        elif spec.rate is None:
            workers = [
                _unary_worker(channels[i % len(channels)], spec, next_payload, recorder, end_window)
                for i in range(spec.concurrency)
            ]
        else:
            workers = [_open_loop(channels, spec, next_payload, recorder, start_at, end_window)]
        await asyncio.gather(*workers)
        return recorder
    finally:
        for channel in channels:
            await channel.close(None)


async def _unary_worker(
    channel: AioChannel,
    spec: LoadSpec,
    next_payload: Any,
    recorder: _Recorder,
    end: float,
) -> None:
    call = channel.unary_unary(_METHODS[spec.interface])
    while True:
        began = time.time()
        if began >= end:
            return
        try:
            response = await call(next_payload(), timeout=spec.timeout)
        except grpc.aio.AioRpcError as exc:
            recorder.failed(began, exc.code().name)
            continue
        recorder.done(began, time.time(), response)


async def _stream_worker(
    channel: AioChannel,
    spec: LoadSpec,
    next_payload: Any,
    recorder: _Recorder,
    end: float,
) -> None:
    stream = channel.stream_stream(_METHODS["stream"])(timeout=spec.duration + 60)
    try:
        while True:
            began = time.time()
            if began >= end:
                break
            await stream.write(next_payload())
            response = await stream.read()
            if response is _EOF:
                recorder.failed(began, "stream ended")
                return
            recorder.done(began, time.time(), response)
        await stream.done_writing()
        await stream.read()
    except grpc.aio.AioRpcError as exc:
        recorder.failed(time.time(), exc.code().name)


async def _open_loop(
    channels: list[AioChannel],
    spec: LoadSpec,
    next_payload: Any,
    recorder: _Recorder,
    start_at: float,
    end: float,
) -> None:
    assert spec.rate is not None
    per_process = spec.rate / spec.processes
    calls = [channel.unary_unary(_METHODS[spec.interface]) for channel in channels]
    in_flight: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, i: int) -> None:
        try:
            response = await calls[i % len(calls)](next_payload(), timeout=spec.timeout)
        except grpc.aio.AioRpcError as exc:
            recorder.failed(scheduled, exc.code().name)
            return
        recorder.done(scheduled, time.time(), response)

    i = 0
    while True:
        now = time.time()
        if now >= end:
            break
        due = start_at + i / per_process
        if due > now:
            await asyncio.sleep(due - now)
            continue
        if len(in_flight) >= spec.concurrency * 8:
            if recorder.start <= due <= recorder.end:
                recorder.dropped += 1
        else:
            task = asyncio.create_task(one(due, i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        i += 1
    if in_flight:
        await asyncio.wait(in_flight, timeout=spec.timeout)


class _Start:
    """The common start, given once every client is connected.

    A start time fixed before the clients are spawned is missed on a busy machine:
    spawning a client, which unpickles its share of the payloads, can take longer
    than any fixed delay, and then the server's CPU window and the clients' windows
    no longer cover the same load.
    """

    def __init__(self, ctx: Any) -> None:
        self._connected = ctx.Semaphore(0)
        self._at = ctx.Value("d", 0.0)
        self._given = ctx.Event()

    def wait(self) -> float:
        """In a client: say it is connected, and wait for the start time."""
        self._connected.release()
        self._given.wait()
        return float(self._at.value)

    def give(self, clients: int, timeout: float) -> float:
        """In the controller: once `clients` are connected, set the start time."""
        deadline = time.monotonic() + timeout
        for _ in range(clients):
            if not self._connected.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError("the load clients did not connect in time")
        self._at.value = time.time() + START_DELAY
        self._given.set()
        return float(self._at.value)


def _client_main(
    spec: LoadSpec, payloads: Sequence[bytes], offset: int, start: _Start, out: Any
) -> None:
    recorder = asyncio.run(_run_client(spec, payloads, offset, start))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put(
        {
            "latencies": np.asarray(recorder.latencies, dtype=np.float64).tobytes(),
            "errors": dict(recorder.errors),
            "statuses": dict(recorder.statuses),
            "dropped": recorder.dropped,
            "cpu": usage.ru_utime + usage.ru_stime,
        }
    )


def _stat_sum(pids: Sequence[int], *columns: int) -> int:
    """The sum of columns of /proc/PID/stat (counted from the state, after the name)
    over processes that still exist."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:  # noqa: PTH123
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(fields[column]) for column in columns)
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of processes so far (from /proc), for server-side cost."""
    return _stat_sum(pids, 11, 12) / os.sysconf("SC_CLK_TCK")


def major_faults(pids: Sequence[int]) -> int:
    """Page faults of processes so far that had to read from disk (from /proc): a
    mapped index the page cache no longer holds is read again, and the thread waits."""
    return _stat_sum(pids, 9)


def context_switches(pids: Sequence[int]) -> tuple[int, int]:
    """(Voluntary, involuntary) context switches of every thread of processes so far
    (from /proc): a thread that waits for a lock, the GIL or I/O switches voluntarily,
    so a server that hands work between its threads more shows more of them per call.
    A thread that ended meanwhile takes its count along (grpc's pool threads stay)."""
    voluntary = involuntary = 0
    for pid in pids:
        try:
            threads = list(Path(f"/proc/{pid}/task").iterdir())
        except FileNotFoundError:
            continue
        for thread in threads:
            try:
                with (thread / "status").open() as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            involuntary += int(line.split()[1])
            except FileNotFoundError:
                continue
    return voluntary, involuntary


def run_load(
    label: str,
    spec: LoadSpec,
    payloads: Sequence[bytes],
    *,
    server_pids: Sequence[int] = (),
) -> LoadResult:
    """Run the load in `spec.processes` spawned processes; merge what they measured."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = _Start(ctx)
    share = max(1, len(payloads) // spec.processes)
    procs = [
        ctx.Process(
            target=_client_main,
            args=(spec, payloads, i * share, start, out),
            name=f"bench-load-{i}",
        )
        for i in range(spec.processes)
    ]
    for proc in procs:
        proc.start()
    parts = []
    try:
        start_at = start.give(len(procs), timeout=spec.timeout + 120)
        time.sleep(max(0.0, start_at + spec.warmup - time.time()))
        cpu_window_start = [cpu_seconds([pid]) for pid in server_pids]
        switches_start = context_switches(server_pids)
        faults_start = major_faults(server_pids)
        time.sleep(max(0.0, start_at + spec.warmup + spec.duration - time.time()))
        cpu_window_end = [cpu_seconds([pid]) for pid in server_pids]
        switches_end = context_switches(server_pids)
        faults_end = major_faults(server_pids)
        deadline = time.time() + spec.warmup + spec.duration + spec.timeout + 60
        for _ in procs:
            parts.append(out.get(timeout=max(1.0, deadline - time.time())))
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    latencies = (
        np.concatenate([np.frombuffer(p["latencies"], dtype=np.float64) for p in parts]) * 1000.0
    )
    errors: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
        statuses.update(p["statuses"])
    calls = len(latencies)
    per_call = spec.batch if spec.interface == "stream" else 1
    latency = (
        {
            "p50": float(np.percentile(latencies, 50)),
            "p90": float(np.percentile(latencies, 90)),
            "p99": float(np.percentile(latencies, 99)),
            "max": float(latencies.max()),
        }
        if calls
        else {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    )
    spec_json = asdict(spec)
    if spec.tls is not None:
        spec_json["tls"] = {"server_name": spec.tls.server_name}  # not the file paths
    return LoadResult(
        label=label,
        spec=spec_json,
        calls=calls,
        items=calls * per_call,
        errors=dict(errors),
        dropped=sum(p["dropped"] for p in parts),
        seconds=spec.duration,
        latency_ms={k: round(v, 3) for k, v in latency.items()},
        statuses=dict(statuses),
        client_cpu_seconds=round(sum(p["cpu"] for p in parts), 2),
        server_cpu_seconds=(
            round(sum(cpu_window_end) - sum(cpu_window_start), 2) if server_pids else None
        ),
        # Connections land on a worker by SO_REUSEPORT's hash: a few streams may all land
        # on one, whose threads then share one GIL (bench/analysis.md, Round 12).
        server_cpu_seconds_by_process=[
            round(end - begin, 2)
            for begin, end in zip(cpu_window_start, cpu_window_end, strict=True)
        ],
        server_switches=(
            (switches_end[0] - switches_start[0], switches_end[1] - switches_start[1])
            if server_pids
            else None
        ),
        server_major_faults=faults_end - faults_start if server_pids else None,
    )
