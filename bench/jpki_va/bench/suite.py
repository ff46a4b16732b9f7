"""One run of the whole harness on one data set: every figure beside its ceiling or peer.

Order matters on a small machine: the index is built first (ingest), then the
real signer and responder start from it (start to serving), the ceilings and
jpki-va are loaded one after the other with the same client and settings, the
peers likewise over HTTP, and the freshness steps, which change the registry,
come last. Every step is bounded in time; a step that cannot run (a peer not
installed) is recorded as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from jpki_va.bench import calls, ceilings, instructions, ladder, lookup, miss, peers, profile
from jpki_va.bench.datagen import BENCH_VERIFIER
from jpki_va.bench.dataset import DataSet, Pool
from jpki_va.bench.fleet_step import SuiteParts, fleet_figures
from jpki_va.bench.httpload import HttpLoadError, HttpSpec, run_wrk
from jpki_va.bench.loadgen import (
    INTERFACES,
    ClientTls,
    Interface,
    LoadResult,
    LoadSpec,
    build_payloads,
    run_load,
)
from jpki_va.bench.mix import Mix
from jpki_va.bench.tls_ca import TlsCa, TlsIdentity
from jpki_va.bench.trivial import start_trivial
from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind, LossCause, Role, Status, serial_to_bytes
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2, va_pb2_grpc, verifiers_pb2
from jpki_va.server.app.config import ResponderConfig, SignerConfig, TlsFiles
from jpki_va.server.app.responder_app import Responder, load_anchors
from jpki_va.server.app.signer_app import SignerApp, start_signer
from jpki_va.server.responder.index_build import build_index, publish_index
from jpki_va.server.responder.index_delta import apply_delta
from jpki_va.server.responder.index_reader import Index, current_index
from jpki_va.server.responder.preproduced import STORE_DIR
from jpki_va.server.snapshot.manifest import MANIFEST, snapshot_sequence
from jpki_va.server.snapshot.verify import SnapshotVerifier

log = logging.getLogger(__name__)

FORMAT = "jpki-va-bench-results/1"


#: The steps for finding where a path's time goes: not in the default run.
_FINDING_STEPS = (
    "ladder",
    "calls",
    "profile",
    "instructions",
    "instruction-ladder",
    "miss",
    "lookup",
    "tls",
)
#: Every step `bench all --steps` knows.
STEPS = ("ingest", "grpc", "store", "http", "freshness", "fleet", *_FINDING_STEPS)
DEFAULT_STEPS = tuple(step for step in STEPS if step not in _FINDING_STEPS)
#: The steps that run against a running signer and responder (`_va_steps`): all but
#: the ingest and the store, which time the index build and the store themselves, and
#: the mTLS step, which starts a signer and responder of its own.
_VA_STEPS = frozenset(STEPS) - {"ingest", "store", "tls"}

#: The verifier the mTLS step's client certificate is registered as, every role.
BENCH_TLS_VERIFIER = "bench-tls-caller"


@dataclass(frozen=True)
class SuiteSettings:
    workers: int = 2  # responder and trivial-server worker processes
    grpc_threads: int = 16  # unary threads per worker, the responder's and the trivial's
    duration: float = 5.0  # seconds of measured load per figure
    # gRPC step: rounds of trivial then jpki-va, each pair a ratio; the median round is
    # the figure (a slow drift of the machine's speed touches both sides of a round).
    grpc_rounds: int = 1
    processes: int = 2  # gRPC client processes
    concurrency: int = 32  # unary calls in flight per client process
    stream_concurrency: int = 2  # CheckStream streams per client process
    channels: int = 4
    batch: int = 100
    rate: float | None = None  # open loop for unary calls
    http: HttpSpec = field(default_factory=HttpSpec)
    mix: Mix = field(default_factory=Mix)
    store_seconds: float = 2.0
    freshness_samples: int = 3
    delta_losses: int = 1000
    steps: tuple[str, ...] = DEFAULT_STEPS
    ladder_duration: float = 3.0  # seconds per rung and interface (bench/ladder.py)
    calls_seconds: float = 2.0  # seconds of calls counted per server and interface
    # Seconds of load on each worker under callgrind (bench/instructions.py): at a
    # few hundred calls a second there, some thousands of calls.
    instructions_seconds: float = 20.0
    # The instruction ladder's rungs, lowest first: the trivial rung, others of
    # bench/ladder.py's and the responder ("jpki-va").
    instruction_rungs: tuple[str, ...] = (*ladder.RUNGS, ladder.TOP)
    freshness_timeout: float = 900.0
    # The fleet step (fleet_step.py): replicas behind Envoy, losses timed on each,
    # seconds of load around the SIGKILL of one replica.
    fleet_replicas: int = 3
    fleet_samples: int = 20
    failover_seconds: float = 6.0
    # Pre-produced OCSP responses in the responder (off: every answer a cache misses is
    # signed live, the figure before them).
    ocsp_preproduce: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.steps) - set(STEPS)
        if unknown:
            raise ValueError(f"unknown steps: {', '.join(sorted(unknown))}")
        if self.workers < 1 or self.freshness_samples < 0 or self.delta_losses < 0:
            raise ValueError("workers must be >= 1; samples and losses >= 0")
        if self.grpc_rounds < 1:
            raise ValueError("gRPC rounds must be >= 1")
        rungs = self.instruction_rungs
        if not rungs or rungs[0] != "trivial" or set(rungs) - {*ladder.RUNGS, ladder.TOP}:
            raise ValueError(
                f"the instruction ladder's rungs start with trivial and are among "
                f"{', '.join((*ladder.RUNGS, ladder.TOP))}"
            )
        if self.fleet_replicas < 2 or self.fleet_samples < 1 or self.failover_seconds < 3:
            raise ValueError("a fleet of >= 2 replicas, >= 1 sample, >= 3 s of failover load")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    for tool, args in (("wrk", ["-v"]), ("cfssl", ["version"]), ("openssl", ["version"])):
        if shutil.which(tool):
            out = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
            info[tool] = (out.stdout or out.stderr).strip().splitlines()[0]
    return info


def _issuers(ds: DataSet) -> dict[CertKind, x509.Certificate]:
    out = {}
    for kind in CertKind:
        path = ds.samples_dir / f"issuer-{kind.slug}.pem"
        out[kind] = x509.load_pem_x509_certificate(path.read_bytes())
    return out


def _snapshots(ds: DataSet) -> list[Path]:
    snaps = [p for p in ds.snapshot_dir.iterdir() if snapshot_sequence(p) is not None]
    return sorted(snaps, key=lambda p: snapshot_sequence(p) or 0)


def _latest_full(ds: DataSet) -> Path:
    """The newest full snapshot (its manifest is peeked at here, verified by the caller)."""
    for path in reversed(_snapshots(ds)):
        try:
            if json.loads((path / MANIFEST).read_bytes()).get("type") == "full":
                return path
        except (OSError, ValueError):
            continue
    raise FileNotFoundError(f"no full snapshot in {ds.snapshot_dir}")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ingest(ds: DataSet) -> dict[str, Any]:
    """What a responder does from nothing: verify and build the newest full snapshot's
    index, then apply the deltas published after it (earlier runs' freshness steps)."""
    index_root = ds.responder_dir / "index"
    shutil.rmtree(index_root, ignore_errors=True)
    verifier = SnapshotVerifier(load_anchors(_responder_config(ds, 1, None)), SystemClock())
    path = _latest_full(ds)
    # CPU beside wall: on a shared machine the wall time is an upper bound, the CPU not.
    start, start_cpu = time.perf_counter(), time.process_time()
    snapshot = verifier.verify(path)
    verified, verified_cpu = time.perf_counter(), time.process_time()
    built = build_index(snapshot, index_root)
    done, done_cpu = time.perf_counter(), time.process_time()
    deltas = [p for p in _snapshots(ds) if (snapshot_sequence(p) or 0) > snapshot.sequence]
    for delta in deltas:
        apply_delta(verifier.verify(delta), built)
    applied = time.perf_counter()
    publish_index(index_root, built)
    return {
        "snapshot": path.name,
        "records": snapshot.manifest.record_count,
        "crls": len(snapshot.manifest.crls),
        "crl_entries": sum(len(c.crl) for c in snapshot.crls),
        "verify_seconds": round(verified - start, 2),
        "build_seconds": round(done - verified, 2),
        "total_seconds": round(done - start, 2),
        "verify_cpu_seconds": round(verified_cpu - start_cpu, 2),
        "build_cpu_seconds": round(done_cpu - verified_cpu, 2),
        "deltas_after": len(deltas),
        "deltas_seconds": round(applied - done, 2),
        "index_bytes": _du(built),
    }


def _responder_config(ds: DataSet, workers: int, signer: str | None) -> ResponderConfig:
    return ResponderConfig(
        http_listen="127.0.0.1:0",
        snapshot_dir=ds.snapshot_dir,
        state_dir=ds.responder_dir,
        trust_anchors=(ds.root_pem,),
        listen="127.0.0.1:0",
        workers=workers,
        signer=signer,
        insecure_loopback=True,
        loopback_verifier=BENCH_VERIFIER,
    )


#: What a responder answers a caller its index does not entitle (or know).
_REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def _until_answered(
    status: va_pb2_grpc.StatusServiceStub, deadline: float, *, refused_serves: bool
) -> None:
    """Ask a Check until it is answered (or, with `refused_serves`, refused for its
    caller) or `deadline` (perf_counter) passes: then the last error is raised.
    While the responder is not up, or its index does not know the caller, it errs."""
    while True:
        try:
            status.Check(check_request(CertKind.CARD_SIGN, 1), timeout=2)
            return
        except grpc.RpcError as exc:
            if refused_serves and exc.code() in _REFUSED:
                return
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.05)


PREPRODUCE_TIMEOUT = 4 * 3600.0  # a national index's first pass takes hours of one CPU


class RunningVa:
    """The real signer and responder on loopback, from the data set, default intervals."""

    def __init__(
        self,
        ds: DataSet,
        workers: int,
        client: grpc.ChannelCredentials | None = None,
        **responder: Any,
    ) -> None:
        """`responder`: ResponderConfig fields other than the defaults (tests' limits,
        mTLS); `client`: the credentials this harness's own calls present to a
        responder that speaks only mTLS."""
        self.ds = ds
        self._client = client
        self.signer: SignerApp = start_signer(
            SignerConfig(
                data_dir=ds.signer_dir,
                hsm=ds.hsm_config(),
                listen="127.0.0.1:0",
                insecure_loopback=True,
            )
        )
        config = _responder_config(ds, workers, f"127.0.0.1:{self.signer.port}")
        # The bench waits for pre-production (`start`): a whole CPU for it meanwhile.
        config = replace(config, ocsp_preproduce_share=1.0)
        self.responder = Responder(replace(config, **responder))
        self._stop = threading.Event()
        self._runner: threading.Thread | None = None
        self._channels: list[grpc.Channel] = []
        self.start_seconds = 0.0
        self.preproduce: dict[str, Any] = {}

    def start(self) -> None:
        began = time.perf_counter()
        self.responder.start()
        # A caller refused is a caller judged against a loaded index: serving. (The
        # mTLS step registers its caller after the responder is up.)
        _until_answered(self.status_stub(), began + 120, refused_serves=True)
        self.start_seconds = time.perf_counter() - began
        self._runner = threading.Thread(target=self.responder.run, args=(self._stop,), daemon=True)
        self._runner.start()
        self.preproduce = self._wait_preproduced()

    def _wait_preproduced(self) -> dict[str, Any]:
        """Wait until the OCSP producer has finished a pass over the live index: the
        figures that follow are of the steady state, not of a store filling. Its pass
        (what it produced or kept, its CPU seconds) and the wait are the result."""
        began = time.perf_counter()
        state = self.responder.preproduced()
        while state and not (state.get("done") and state.get("index") == state.get("live")):
            if time.perf_counter() - began > PREPRODUCE_TIMEOUT:
                raise TimeoutError(f"OCSP pre-production unfinished after {PREPRODUCE_TIMEOUT} s")
            time.sleep(0.5)
            state = self.responder.preproduced()
        return {
            "wait_seconds": round(time.perf_counter() - began, 3),
            "pass_seconds": state.get("seconds"),
            "cpu_seconds": round(state.get("cpu_seconds", 0.0), 3),
            "counts": state.get("counts", {}),
            "share": self.responder.config.ocsp_preproduce_share,
        }

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.responder.port}"

    def warm(self) -> None:
        """Read the files the responder's lookups map (the live index, the pre-produced
        OCSP store) through once, so the page cache holds them.

        A replica's lookups keep its index in the page cache; this machine drops idle
        file pages within seconds (a third of a fresh index in 30 s), and a lookup
        that faults waits for the disk. Each jpki-va round starts warm, so its CPU per
        item is the serving's, not the disk's (`server_major_faults_per_item` shows
        what faulted all the same)."""
        index = current_index(self.ds.responder_dir / "index")
        files = [self.ds.responder_dir / STORE_DIR / "data.mdb"]
        if index is not None:
            files.append(index / "data.mdb")
        chunk = bytearray(1 << 20)
        for path in files:
            if path.exists():
                with path.open("rb", buffering=0) as f:
                    while f.readinto(chunk):
                        pass

    def last_event(self) -> int:
        """The sequence of the registry's last loss event (the fleet step's stages)."""
        with self.signer.registry.read() as tx:
            return tx.counter("event")

    def status_stub(self) -> va_pb2_grpc.StatusServiceStub:
        channel = (
            grpc.insecure_channel(self.target)
            if self._client is None
            else grpc.secure_channel(self.target, self._client)
        )
        self._channels.append(channel)
        return va_pb2_grpc.StatusServiceStub(channel)

    def signer_stub(self) -> signer_pb2_grpc.SignerServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.signer.port}")
        self._channels.append(channel)
        return signer_pb2_grpc.SignerServiceStub(channel)

    def close(self) -> None:
        self._stop.set()
        if self._runner is not None:
            self._runner.join()
        self.responder.shutdown()
        for channel in self._channels:
            channel.close()
        self.signer.stop()


def check_request(kind: CertKind, serial: int) -> va_pb2.CheckRequest:
    return va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=int(kind),  # type: ignore[arg-type]
                serial=serial_to_bytes(serial),
            )
        )
    )


_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
_ROLLUP_FIELDS = ("Pss", "Pss_Anon", "Pss_File", "Private_Clean", "Private_Dirty")


def _kb_fields(path: Path, names: tuple[str, ...]) -> dict[str, float]:
    """The named `Key: N kB` lines of a /proc file, in MB."""
    fields: dict[str, float] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in names:
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def rss(pids: list[int]) -> dict[str, Any]:
    """Each worker's memory in MB: VmRSS split into anonymous (the worker's own heap) and
    file-backed (pages of the mapped index and of shared libraries, in the page cache
    and shared by every worker), and Pss, which charges each shared page to its sharers
    (smaps_rollup). Private is what the worker alone holds, clean or dirty."""
    out = []
    for pid in pids:
        try:
            fields = _kb_fields(Path(f"/proc/{pid}/status"), _STATUS_FIELDS)
            rollup = _kb_fields(Path(f"/proc/{pid}/smaps_rollup"), _ROLLUP_FIELDS)
        except OSError:
            continue
        fields.update({k: v for k, v in rollup.items() if k.startswith("Pss")})
        fields["Private"] = round(
            rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0), 1
        )
        out.append(fields)

    def most(key: str) -> float:
        return max((w.get(key, 0.0) for w in out), default=0.0)

    return {
        "workers": out,
        "max_vmrss_mb": most("VmRSS"),
        "max_rss_anon_mb": most("RssAnon"),
        "max_rss_file_mb": most("RssFile"),
        "max_pss_mb": most("Pss"),
        "max_private_mb": most("Private"),
    }


def _canned(va: RunningVa, ds: DataSet) -> tuple[bytes, bytes]:
    """A real GOOD answer and a real OCSP response from jpki-va, for the trivial server."""
    pool = ds.pool()
    kind, serial = pool.good[0]
    reply = va.status_stub().Check(check_request(kind, serial), timeout=10)
    payload = build_payloads("ocsp", pool, Mix(good=1, revoked=0, unknown=0), _issuers(ds), count=1)
    der = va.status_stub().Ocsp(va_pb2.OcspRequest.FromString(payload[0]), timeout=10).der
    return reply.SerializeToString(), der


def _step_payloads(
    interface: Interface,
    pool: Pool,
    issuers: dict[CertKind, x509.Certificate],
    settings: SuiteSettings,
    seed: int = 7,
) -> list[bytes]:
    """The requests one interface's load sends in the gRPC and ladder steps."""
    count = 2_000 if interface == "stream" else 20_000
    return build_payloads(
        interface, pool, settings.mix, issuers, batch=settings.batch, count=count, seed=seed
    )


def grpc_figures(
    ds: DataSet,
    va: RunningVa,
    settings: SuiteSettings,
    progress: Callable[[str], None],
    tls: BenchTls | None = None,
) -> dict[str, Any]:
    """Each interface's load on the trivial server, then on the responder, in rounds;
    with `tls`, both speak only mTLS and the client presents `tls.caller`."""
    pool = ds.pool()
    issuers = _issuers(ds)
    check, ocsp_der = _canned(va, ds)
    trivial = start_trivial(
        settings.workers,
        settings.grpc_threads,
        check,
        ocsp_der,
        None if tls is None else tls.server_tls(),
    )
    client = None if tls is None else tls.client_tls()
    out: dict[str, Any] = {}
    try:
        for interface in INTERFACES:
            rounds = []
            for turn in range(1, settings.grpc_rounds + 1):
                # Each round its own draw of certificates: OCSP answers are kept per
                # worker, and a round asking the last round's again would measure hits.
                payloads = _step_payloads(interface, pool, issuers, settings, seed=6 + turn)
                pair: dict[str, Any] = {}
                for name, target, pids in (
                    ("trivial", trivial.target, trivial.pids),
                    ("jpki-va", va.target, va.responder.worker_pids),
                ):
                    of = (
                        f", round {turn} of {settings.grpc_rounds}"
                        if settings.grpc_rounds > 1
                        else ""
                    )
                    over = "" if tls is None else " over mTLS"
                    progress(f"gRPC{over} {interface} -> {name}{of}")
                    if name == "jpki-va":
                        va.warm()
                    spec = replace(_spec(settings, target, interface), tls=client)
                    pair[name] = run_load(
                        f"{name} {interface}", spec, payloads, server_pids=pids
                    ).to_json()
                ceiling = pair["trivial"]["rate"]
                pair["ratio_to_trivial"] = (
                    round(pair["jpki-va"]["rate"] / ceiling, 3) if ceiling else None
                )
                rounds.append(pair)
            out[interface] = median_round(rounds)
    finally:
        trivial.stop()
    return out


@dataclass(frozen=True)
class BenchTls:
    """The mTLS step's throwaway PKI (tls_ca.py): one server certificate for the
    trivial server and the responder alike, and the caller's client certificate."""

    ca: TlsCa
    server: TlsIdentity
    caller: TlsIdentity

    @classmethod
    def create(cls, directory: Path) -> BenchTls:
        ca = TlsCa(directory, "jpki-va bench TLS CA")
        return cls(ca, ca.issue("bench-server", server=True), ca.issue(BENCH_TLS_VERIFIER))

    def server_tls(self) -> TlsFiles:
        """What the responder and the trivial server listen with."""
        return TlsFiles(self.server.cert, self.server.key, self.ca.cert_file)

    def client_tls(self) -> ClientTls:
        return ClientTls(self.ca.cert_file, self.caller.cert, self.caller.key)

    def responder(self) -> dict[str, Any]:
        """The ResponderConfig fields of a responder that speaks only mTLS."""
        return {"insecure_loopback": False, "loopback_verifier": None, "tls": self.server_tls()}


def _register_caller(va: RunningVa, caller: TlsIdentity, timeout: float = 120.0) -> None:
    """`caller`'s certificate as the verifier BENCH_TLS_VERIFIER, every role, at the
    signer (replacing the last run's certificate); back when the responder knows it."""
    va.signer_stub().AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=BENCH_TLS_VERIFIER,
            roles=[int(role) for role in Role],  # type: ignore[misc]
            client_certificate_der=[caller.der],
            agreement="BENCH-TLS",
            replace=True,
        ),
        timeout=30,
    )
    _until_answered(va.status_stub(), time.perf_counter() + timeout, refused_serves=False)


def tls_figures(
    ds: DataSet, settings: SuiteSettings, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The gRPC step over mTLS: the trivial server and a responder (started here, on
    the data set's state) with the same server certificate and client CA, the load's
    client presenting a registered verifier's certificate. What identifying a caller by
    its certificate costs per call, beside what TLS costs the transport.

    `{"grpc": ...}` as the gRPC step's figures, and with the calls step asked for as
    well, `"calls"`: its counts over mTLS."""
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as scratch:
        pki = BenchTls.create(Path(scratch))
        va = RunningVa(
            ds,
            settings.workers,
            client=pki.ca.channel_credentials(pki.caller),
            ocsp_preproduce=settings.ocsp_preproduce,
            grpc_threads=settings.grpc_threads,
            **pki.responder(),
        )
        try:
            progress("start the signer and a responder over mTLS; register the caller")
            va.start()
            _register_caller(va, pki.caller)
            out = {"grpc": grpc_figures(ds, va, settings, progress, pki)}
            if "calls" in settings.steps:
                out["calls"] = calls_figures(ds, va, settings, progress, pki)
            return out
        finally:
            va.close()


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose ratio is the median (the upper one of an even count), as the
    figures, and with several rounds, each round's rates, CPU and ratio beside them."""
    ranked = sorted(rounds, key=lambda pair: pair["ratio_to_trivial"] or 0.0)
    figures = dict(ranked[len(ranked) // 2])
    if len(rounds) > 1:
        figures["rounds"] = [
            {
                "ratio_to_trivial": pair["ratio_to_trivial"],
                **{name: _round_side(pair[name]) for name in ("trivial", "jpki-va")},
            }
            for pair in rounds
        ]
    return figures


def _round_side(figures: dict[str, Any]) -> dict[str, Any]:
    """One server's figures of a round as the rounds list keeps them."""
    side = {
        "rate": figures["rate"],
        "server_cpu_us_per_item": figures.get("server_cpu_us_per_item"),
    }
    for measured in (
        "server_switches_per_item",
        "server_major_faults_per_item",
        "server_cpu_seconds_by_process",
    ):
        if measured in figures:  # results from before it was measured lack it
            side[measured] = figures[measured]
    return side


def ladder_figures(
    ds: DataSet, va: RunningVa, settings: SuiteSettings, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Each interface's rate and worker CPU per item on every rung (bench/ladder.py).

    Rung by rung, with the same payloads and client for all; the top rung is the
    running responder. Per interface, each rung's ratio to the trivial rung.
    """
    pool = ds.pool()
    issuers = _issuers(ds)
    check, ocsp_der = _canned(va, ds)
    payloads = {
        interface: _step_payloads(interface, pool, issuers, settings) for interface in INTERFACES
    }
    timed = replace(settings, duration=settings.ladder_duration)
    spec = ladder.RungSpec(str(ds.responder_dir / "index"), BENCH_VERIFIER, settings.grpc_threads)
    rows: dict[str, list[dict[str, Any]]] = {interface: [] for interface in INTERFACES}

    def measure(name: str, target: str, pids: list[int]) -> None:
        for interface in INTERFACES:
            progress(f"ladder {interface} -> {name}")
            result = run_load(
                f"{name} {interface}",
                _spec(timed, target, interface),
                payloads[interface],
                server_pids=pids,
            ).to_json()
            rows[interface].append(
                {
                    "rung": name,
                    "rate": result["rate"],
                    "cpu_us_per_item": result.get("server_cpu_us_per_item"),
                    "errors": result["error_count"],
                }
            )

    for name in ladder.RUNGS:
        rung = ladder.start_rung(name, settings.workers, spec, check, ocsp_der)
        try:
            measure(name, rung.target, rung.pids)
        finally:
            rung.stop()
    measure(ladder.TOP, va.target, va.responder.worker_pids)
    for interface_rows in rows.values():
        base = interface_rows[0]["rate"] or None
        for row in interface_rows:
            row["ratio_to_trivial"] = round(row["rate"] / base, 3) if base else None
    return rows


def calls_figures(
    ds: DataSet,
    va: RunningVa,
    settings: SuiteSettings,
    progress: Callable[[str], None],
    tls: BenchTls | None = None,
) -> dict[str, Any]:
    """Python calls per served unary call, trivial worker against the responder's
    (bench/calls.py): one fresh worker of each, the bench's payloads and client; with
    `tls`, both over mTLS, as `grpc_figures` has them.

    The responder's worker reads the running replica's index, OCSP keys and store,
    with a ledger shard of its own (the slot after the running workers').
    """
    check, ocsp_der = _canned(va, ds)
    config = replace(
        _responder_config(ds, settings.workers, None),
        grpc_threads=settings.grpc_threads,
        **({} if tls is None else tls.responder()),
    )
    workers = {
        "trivial": calls.trivial_worker(
            settings.grpc_threads, check, ocsp_der, None if tls is None else tls.server_tls()
        ),
        "jpki-va": calls.responder_worker(config, settings.workers),
    }
    client = None if tls is None else tls.client_tls()
    # Long enough that the counted window (from a second in) ends under load.
    timed = replace(settings, duration=settings.calls_seconds + 2.0)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as scratch:
        for interface in calls.HANDLERS:
            payloads = build_payloads(
                interface, ds.pool(), settings.mix, _issuers(ds), batch=settings.batch
            )

            def run(target: str, interface: Interface, payloads: list[bytes] = payloads) -> None:
                spec = replace(_spec(timed, target, interface), tls=client)
                run_load(f"calls {interface}", spec, payloads)

            counts = {}
            for name, worker in workers.items():
                progress(f"calls {interface} -> {name}")
                counts[name] = calls.count_calls(
                    run, worker, interface, settings.calls_seconds, Path(scratch), name
                )
            out[interface] = calls.compare(counts["trivial"], counts["jpki-va"], interface)
    return out


def instructions_figures(
    ds: DataSet, va: RunningVa, settings: SuiteSettings, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Instructions per served unary call (bench/instructions.py): one fresh worker of
    the trivial server and one of the responder, as the calls step has them, each
    under callgrind while a light load (one client process, four calls in flight,
    so that few calls are in flight when the count ends) runs on it."""
    check, ocsp_der = _canned(va, ds)
    workers = {
        "trivial": calls.trivial_worker(settings.grpc_threads, check, ocsp_der),
        "jpki-va": _counted_responder(ds, settings),
    }
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as scratch:
        for interface in calls.HANDLERS:  # the unary interfaces, as the calls step has them
            load = _instructions_load(ds, settings, interface)
            sides = []
            for name, worker in workers.items():
                progress(f"instructions {interface} -> {name}")
                sides.append(
                    instructions.side(*instructions.count_instructions(load, worker, Path(scratch)))
                )
            out[interface] = instructions.compare(sides[0], sides[1])
    return out


def instruction_ladder_figures(
    ds: DataSet, va: RunningVa, settings: SuiteSettings, progress: Callable[[str], None]
) -> dict[str, list[dict[str, Any]]]:
    """The cost ladder (bench/ladder.py) in instructions per served unary call: one
    worker of each rung in `settings.instruction_rungs`, then of the responder, each
    under callgrind with the instructions step's load. The ladder's CPU figures move
    with the machine by more than most layers cost; a layer's count moves by a few
    thousand instructions, so this is the breakdown to tell one layer's cost by."""
    check, ocsp_der = _canned(va, ds)
    spec = ladder.RungSpec(str(ds.responder_dir / "index"), BENCH_VERIFIER, settings.grpc_threads)
    workers = {
        name: (
            _counted_responder(ds, settings)
            if name == ladder.TOP
            else ladder.rung_worker(name, spec, check, ocsp_der)
        )
        for name in settings.instruction_rungs  # in the order given
    }
    out: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-instruction-ladder-") as scratch:
        for interface in calls.HANDLERS:
            load = _instructions_load(ds, settings, interface)
            rows: list[dict[str, Any]] = []
            for name, worker in workers.items():
                progress(f"instruction ladder {interface} -> {name}")
                figures, _ = instructions.side(
                    *instructions.count_instructions(load, worker, Path(scratch))
                )
                rows.append({"rung": name, **figures})
            base = rows[0]["instructions_per_call"]
            for row in rows:
                row["ratio_to_trivial"] = round(base / row["instructions_per_call"], 3)
            out[interface] = rows
    return out


def _counted_responder(ds: DataSet, settings: SuiteSettings) -> calls.Worker:
    """The responder's own worker, as the calls and instructions steps count it."""
    config = replace(
        _responder_config(ds, settings.workers, None), grpc_threads=settings.grpc_threads
    )
    return calls.responder_worker(config, settings.workers)


def _instructions_load(
    ds: DataSet, settings: SuiteSettings, interface: Interface
) -> Callable[[str], int]:
    """The instructions step's load on one interface: one client process, four calls in
    flight, no warm-up window (every call served while counting is counted); returns
    the calls completed."""
    payloads = _step_payloads(interface, ds.pool(), _issuers(ds), settings)
    light = replace(
        settings, duration=settings.instructions_seconds, processes=1, concurrency=4, rate=None
    )

    def load(target: str) -> int:
        spec = replace(_spec(light, target, interface), warmup=0.0)
        return run_load(f"instructions {interface}", spec, payloads).calls

    return load


def profile_figures(
    ds: DataSet, va: RunningVa, settings: SuiteSettings, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Worker CPU per call by library (bench/profile.py): each interface's load on the
    trivial server, then on the responder, with perf sampling the server's workers."""
    perf = profile.perf_command()
    pool = ds.pool()
    issuers = _issuers(ds)
    check, ocsp_der = _canned(va, ds)
    trivial = start_trivial(settings.workers, settings.grpc_threads, check, ocsp_der)
    out: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as scratch:
            for interface in INTERFACES:
                payloads = _step_payloads(interface, pool, issuers, settings)
                sides: list[profile.Side] = []
                for name, target, pids in (
                    ("trivial", trivial.target, trivial.pids),
                    ("jpki-va", va.target, va.responder.worker_pids),
                ):
                    progress(f"profile {interface} -> {name}")
                    if name == "jpki-va":
                        va.warm()
                    spec = _spec(settings, target, interface)

                    def load(
                        spec: LoadSpec = spec,
                        pids: list[int] = pids,
                        payloads: list[bytes] = payloads,
                        label: str = f"profile {name} {interface}",
                    ) -> dict[str, Any]:
                        return run_load(label, spec, payloads, server_pids=pids).to_json()

                    data = Path(scratch) / f"{interface}-{name}.data"
                    sides.append(profile.side(*profile.sampled(perf, pids, data, load)))
                out[interface] = profile.compare(sides[0], sides[1])
    finally:
        trivial.stop()
    return out


def _spec(settings: SuiteSettings, target: str, interface: Interface) -> LoadSpec:
    return LoadSpec(
        target=target,
        interface=interface,
        duration=settings.duration,
        processes=settings.processes,
        concurrency=settings.stream_concurrency if interface == "stream" else settings.concurrency,
        channels=settings.channels,
        rate=None if interface == "stream" else settings.rate,
        batch=settings.batch,
    )


def store_figures(ds: DataSet, settings: SuiteSettings) -> dict[str, Any]:
    index_root = ds.responder_dir / "index"
    path = current_index(index_root)
    if path is None:
        raise FileNotFoundError("no index built: run the ingest step first")
    pool = ds.pool()
    pairs = pool.good + pool.revoked + pool.unknown
    return ceilings.store_ceiling(path, index_root, pairs, settings.workers, settings.store_seconds)


def http_figures(
    ds: DataSet, va: RunningVa | None, settings: SuiteSettings, progress: Callable[[str], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": ds.info().get("peers", {})}
    http_url = _jpki_http_url(va)
    runs: list[tuple[str, Callable[[], LoadResult]]] = [
        ("cfssl", lambda: peers.cfssl(ds, settings.http)),
        ("openssl", lambda: peers.openssl_ocsp(ds, settings.http)),
    ]
    if http_url is not None and va is not None:
        pids = va.responder.worker_pids

        def jpki(label: str, spec: HttpSpec) -> Callable[[], LoadResult]:
            requests = ds.peers_dir / "requests.hex"
            return lambda: run_wrk(label, http_url, spec, requests, server_pids=pids)

        # cfssl answers from responses signed before its run; jpki-va signs on a cache
        # miss. A first, unmeasured pass fills each worker's cache with the same
        # requests, so the figure is the one the target names: cached signed responses.
        warm = replace(settings.http, duration=max(1, settings.http.duration // 2))
        runs[:0] = [
            ("jpki-va-warmup", jpki("jpki-va HTTP OCSP, cache warm-up", warm)),
            ("jpki-va", jpki("jpki-va HTTP OCSP", settings.http)),
        ]
    else:
        out["jpki-va"] = {"skipped": "the responder is not running"}
    for name, run in runs:
        progress(f"HTTP OCSP -> {name}")
        try:
            out[name] = run().to_json()
        except (HttpLoadError, OSError) as exc:
            out[name] = {"skipped": str(exc)}
    mine = out.get("jpki-va", {}).get("rate")
    for peer in ("cfssl", "openssl"):
        theirs = out.get(peer, {}).get("rate")
        out[f"ratio_to_{peer}"] = round(mine / theirs, 3) if mine and theirs else None
    return out


def _jpki_http_url(va: RunningVa | None) -> str | None:
    """The responder's HTTP OCSP URL (POST to the root, as to the peers)."""
    if va is None or not va.responder.http_port:
        return None
    return f"http://127.0.0.1:{va.responder.http_port}/"


def _wait_status(
    stub: va_pb2_grpc.StatusServiceStub, kind: CertKind, serial: int, timeout: float
) -> float:
    """Seconds until the responder answers REVOKED for (kind, serial)."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        try:
            reply = stub.Check(check_request(kind, serial), timeout=5)
            if Status(reply.status.status) is Status.REVOKED:
                return time.perf_counter() - began
        except grpc.RpcError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{kind.name} {serial:X} not answered REVOKED within {timeout:.0f} s")


def _good_serials(
    stub: va_pb2_grpc.StatusServiceStub, ds: DataSet, kind: CertKind, n: int
) -> list[int]:
    """Serials of `kind` that are GOOD now (earlier runs may have ended some)."""
    out = []
    for k, serial in ds.pool().good:
        if k is not kind:
            continue
        if Status(stub.Check(check_request(k, serial), timeout=5).status.status) is Status.GOOD:
            out.append(serial)
            if len(out) == n:
                break
    return out


def freshness(
    ds: DataSet, va: RunningVa, settings: SuiteSettings, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Registry commit to answer, and a batch of losses to answer, through the real services."""
    status = va.status_stub()
    signer = va.signer_stub()
    kind = CertKind.CARD_AUTH  # no cascade: one loss is one change
    wanted = settings.freshness_samples + settings.delta_losses
    serials = _good_serials(status, ds, kind, wanted)
    if len(serials) < wanted:
        raise RuntimeError(f"only {len(serials)} good {kind.name} serials left in the pool")
    samples = []
    for i in range(settings.freshness_samples):
        progress(f"commit to answer {i + 1}/{settings.freshness_samples}")
        _record_loss(signer, kind, serials[i])
        samples.append(round(_wait_status(status, kind, serials[i], settings.freshness_timeout), 3))
    out: dict[str, Any] = {
        "delta_interval_seconds": va.signer.config.delta_interval,
        "full_interval_seconds": va.signer.config.full_interval,
        "poll_interval_seconds": va.responder.config.poll_interval,
        "commit_to_answer_seconds": samples,
        "commit_to_answer_max": max(samples, default=None),
    }
    if settings.delta_losses:
        progress(f"{settings.delta_losses} losses")
        batch = serials[settings.freshness_samples :]
        began = time.perf_counter()
        for serial in batch:
            _record_loss(signer, kind, serial)
        recorded = time.perf_counter() - began
        answered = _wait_status(status, kind, batch[-1], settings.freshness_timeout)
        first_ok = all(
            Status(status.Check(check_request(kind, s), timeout=5).status.status) is Status.REVOKED
            for s in batch[:: max(1, len(batch) // 50)]
        )
        out["losses"] = {
            "count": len(batch),
            "record_seconds": round(recorded, 2),
            "last_commit_to_answer_seconds": round(answered, 2),
            "all_sampled_revoked": first_ok,
        }
    return out


def _record_loss(stub: signer_pb2_grpc.SignerServiceStub, kind: CertKind, serial: int) -> None:
    stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=int(kind),  # type: ignore[arg-type]
            serial=serial_to_bytes(serial),
            cause=int(LossCause.HOLDER_REQUEST),  # type: ignore[arg-type]
        ),
        timeout=30,
    )


def copy_index(ds: DataSet) -> Path:
    """A scratch copy of the live index, to time delta application away from the responder."""
    live = current_index(ds.responder_dir / "index")
    if live is None:
        raise FileNotFoundError("no index built: run the ingest step first")
    scratch = ds.root / "scratch-index" / live.name
    shutil.rmtree(scratch.parent, ignore_errors=True)
    shutil.copytree(live, scratch)
    return scratch


def delta_apply(ds: DataSet, scratch: Path) -> dict[str, Any]:
    """Verify and apply, in order, every delta published after the scratch index's snapshot.

    These are the deltas the freshness step made the signer publish; each is timed
    on its own (verification apart), as the ingester applies it to the live index.
    """
    verifier = SnapshotVerifier(load_anchors(_responder_config(ds, 1, None)), SystemClock())
    copy = Index(scratch)
    try:
        start_sequence = copy.sequence  # the last snapshot applied: a full one or a delta
    finally:
        copy.close()
    applied = []
    try:
        for path in sorted(ds.snapshot_dir.iterdir()):
            sequence = snapshot_sequence(path)
            if sequence is None or sequence <= start_sequence:
                continue
            began = time.perf_counter()
            snapshot = verifier.verify(path)
            verified = time.perf_counter()
            if snapshot.manifest.type != "delta":
                break
            result = apply_delta(snapshot, scratch)
            done = time.perf_counter()
            applied.append(
                {
                    "sequence": sequence,
                    "losses": len(result.losses),
                    "records": result.records,
                    "verify_seconds": round(verified - began, 3),
                    "apply_seconds": round(done - verified, 3),
                }
            )
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)
    biggest = max(applied, key=lambda a: a["losses"], default=None)
    return {
        "deltas": applied,
        "largest_losses": None if biggest is None else biggest["losses"],
        "largest_apply_seconds": None if biggest is None else biggest["apply_seconds"],
        "largest_verify_seconds": None if biggest is None else biggest["verify_seconds"],
    }


def run_suite(
    ds: DataSet, settings: SuiteSettings, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    say = progress or (lambda text: log.info("bench: %s", text))
    if "profile" in settings.steps:
        profile.perf_command()  # missing: said now, not after the steps before it
    if {"instructions", "instruction-ladder"} & set(settings.steps):
        instructions.valgrind_command()
    info = ds.info()
    results: dict[str, Any] = {
        "format": FORMAT,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "dataset": {
            k: info.get(k)
            for k in (
                "holders",
                "seed",
                "partitions",
                "certificates",
                "certificate_total",
                "losses",
                "loss_total",
                "expired_total",
                "timings",
                "cpu_seconds",
                "sizes",
            )
        },
        "settings": _settings_json(settings),
    }
    if "ingest" in settings.steps or current_index(ds.responder_dir / "index") is None:
        say("ingest: verify and build the index")
        results["ingest"] = ingest(ds)
    if "store" in settings.steps:
        say("store ceiling")
        results["store"] = store_figures(ds, settings)
    scratch = copy_index(ds) if "freshness" in settings.steps else None
    if _VA_STEPS & set(settings.steps):
        results.update(_va_steps(ds, settings, say))
    if "tls" in settings.steps:
        results["grpc_tls"] = tls_figures(ds, settings, say)
    if scratch is not None and "freshness" in results:
        say("delta application, timed on a copy of the index")
        results["freshness"]["delta_apply"] = delta_apply(ds, scratch)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


def _va_steps(ds: DataSet, settings: SuiteSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """The steps that load the running signer and responder, in the order they run."""
    results: dict[str, Any] = {}
    say("start signer and responder")
    va = RunningVa(
        ds,
        settings.workers,
        ocsp_preproduce=settings.ocsp_preproduce,
        grpc_threads=settings.grpc_threads,
    )
    try:
        va.start()
        results["start_to_serving_seconds"] = round(va.start_seconds, 3)
        results["preproduce"] = va.preproduce
        results["rss_idle"] = rss(va.responder.worker_pids)
        if "grpc" in settings.steps:
            results["grpc"] = grpc_figures(ds, va, settings, say)
            results["rss_after_load"] = rss(va.responder.worker_pids)
        if "http" in settings.steps:
            results["http_ocsp"] = http_figures(ds, va, settings, say)
            # The OCSP response cache fills under this load, not under gRPC's.
            results["rss_after_http"] = rss(va.responder.worker_pids)
        if "ladder" in settings.steps:
            results["ladder"] = ladder_figures(ds, va, settings, say)
        if "calls" in settings.steps:
            results["calls"] = calls_figures(ds, va, settings, say)
        if "profile" in settings.steps:
            results["profile"] = profile_figures(ds, va, settings, say)
        if "instructions" in settings.steps:
            results["instructions"] = instructions_figures(ds, va, settings, say)
        if "instruction-ladder" in settings.steps:
            results["instruction_ladder"] = instruction_ladder_figures(ds, va, settings, say)
        config = _responder_config(ds, settings.workers, None)
        if "miss" in settings.steps:
            say("OCSP cache miss, in process")
            requests = miss.peer_requests(ds.peers_dir / "requests.hex")
            results["ocsp_miss"] = miss.miss_figures(config, requests, BENCH_VERIFIER)
        if "lookup" in settings.steps:
            say("a stream status's own work, in process")
            results["status_lookup"] = lookup.lookup_figures(config.index_dir)
        if "freshness" in settings.steps:
            results["freshness"] = freshness(ds, va, settings, say)
        if "fleet" in settings.steps:
            parts = SuiteParts(check_request, _good_serials, _issuers, _record_loss)
            results["fleet"] = fleet_figures(ds, va, settings, say, parts)
    finally:
        va.close()
    return results


def _settings_json(settings: SuiteSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["steps"] = list(settings.steps)
    return data
