"""The responder's composition root: one ingester process and N gRPC workers.

Python's GIL makes processes the unit of scale: every worker serves the same port
(SO_REUSEPORT) with its own read-only handle on the live index, which it follows
by polling the `current` pointer. The main process ingests snapshots and keeps the
delegated OCSP-signer certificates fresh; it never serves requests itself.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import lmdb
from cryptography import x509
from prometheus_client import CollectorRegistry

from jpki_va.core.clock import Clock, SystemClock
from jpki_va.protos import (
    crl_pb2,
    crl_pb2_grpc,
    mapping_pb2,
    mapping_pb2_grpc,
    record_pb2,
    record_pb2_grpc,
    signer_pb2,
    signer_pb2_grpc,
    va_pb2,
    verifiers_pb2,
    verifiers_pb2_grpc,
)
from jpki_va.server.access.gate import Gate, NoIdentity, UnknownVerifier
from jpki_va.server.access.proxy import TrustedProxies
from jpki_va.server.app import descriptors
from jpki_va.server.app.config import ResponderConfig
from jpki_va.server.app.dir_lock import DirectoryLock
from jpki_va.server.app.lifeline import ParentGone, tie_to_parent
from jpki_va.server.app.logs import configure
from jpki_va.server.app.producer_app import producer_main
from jpki_va.server.app.signals import stop_on_signals
from jpki_va.server.app.store_config import open_store
from jpki_va.server.base.build_info import register_build_info
from jpki_va.server.base.refusal_log import RefusalLog
from jpki_va.server.http.access import HttpAccess
from jpki_va.server.http.app import HttpApp
from jpki_va.server.http.server import HttpServer, server_tls
from jpki_va.server.law.entitlements import NotEntitled
from jpki_va.server.law.errors import Refused
from jpki_va.server.law.mapping import NoSuchMapping
from jpki_va.server.law.signing_record import NotSigningKind
from jpki_va.server.ledger.provisions import (
    Ledger,
    LedgerError,
    claim_shards,
    local_day,
    open_shard,
)
from jpki_va.server.responder.ca_files import CaFiles
from jpki_va.server.responder.crl_archive import CrlArchive, CrlNotFound
from jpki_va.server.responder.crls import CrlFiles
from jpki_va.server.responder.index_build import prune_abandoned_builds
from jpki_va.server.responder.index_reader import Index, current_index
from jpki_va.server.responder.index_upgrade import upgrade_index
from jpki_va.server.responder.ingest import Ingester, IngestMetrics
from jpki_va.server.responder.ingest_health import IngestCondition, IngestHealth
from jpki_va.server.responder.mappings import Mapper, UnknownCertificate
from jpki_va.server.responder.metrics import (
    CountedSource,
    IndexState,
    MetricsServer,
    ResponderCollector,
    WorkerMetrics,
    mark_worker_dead,
    prepare_multiprocess_dir,
)
from jpki_va.server.responder.ocsp import OcspLimits, OcspResponder
from jpki_va.server.responder.ocsp_cache import ResponseCache
from jpki_va.server.responder.ocsp_keys import OcspKeyStore
from jpki_va.server.responder.preproduced import PreproducedStore
from jpki_va.server.responder.revocation_feed import (
    HEARTBEAT_SECONDS,
    FeedClosed,
    RevocationFeed,
    TooManyWatches,
)
from jpki_va.server.responder.rotation import Rotation
from jpki_va.server.responder.signing_record_lookup import SigningRecords
from jpki_va.server.responder.snapshot_notice import DirectoryNotice, PollOnly, SnapshotNotice
from jpki_va.server.responder.staging import Stager
from jpki_va.server.responder.status import (
    BadRequest,
    IndexHolder,
    IndexStatusSource,
    IssuerCompromiseSource,
    NotReady,
    Resolver,
    StatusSource,
)
from jpki_va.server.responder.token_check import TokenChecker
from jpki_va.server.rpc import server_common
from jpki_va.server.rpc.crl_servicer import CrlServicer
from jpki_va.server.rpc.identity import caller_function, server_credentials, stream_owner
from jpki_va.server.rpc.mapping_servicer import MappingServicer
from jpki_va.server.rpc.metrics_interceptor import MetricsInterceptor
from jpki_va.server.rpc.signing_record_servicer import RecordServicer
from jpki_va.server.rpc.status_servicer import StatusServicer, StreamLimits, add_status_service
from jpki_va.server.rpc.stream_budget import StreamBudget, StreamLimiter
from jpki_va.server.rpc.verifier_token_servicer import VerifierTokenServicer
from jpki_va.server.snapshot.verify import SnapshotVerifier

log = logging.getLogger(__name__)

SERVICE = va_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name
SERVICES = (
    SERVICE,
    crl_pb2.DESCRIPTOR.services_by_name["CrlService"].full_name,
    verifiers_pb2.DESCRIPTOR.services_by_name["VerifierTokenService"].full_name,
    mapping_pb2.DESCRIPTOR.services_by_name["MappingService"].full_name,
    record_pb2.DESCRIPTOR.services_by_name["RecordService"].full_name,
)
STATUS_ERRORS: server_common.ErrorMap = (
    (NoIdentity, grpc.StatusCode.UNAUTHENTICATED),
    (UnknownVerifier, grpc.StatusCode.PERMISSION_DENIED),
    (NotEntitled, grpc.StatusCode.PERMISSION_DENIED),
    (CrlNotFound, grpc.StatusCode.NOT_FOUND),
    (UnknownCertificate, grpc.StatusCode.NOT_FOUND),
    (Refused, grpc.StatusCode.FAILED_PRECONDITION),
    (NoSuchMapping, grpc.StatusCode.INVALID_ARGUMENT),
    (NotSigningKind, grpc.StatusCode.INVALID_ARGUMENT),
    (TooManyWatches, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FeedClosed, grpc.StatusCode.UNAVAILABLE),
    # Only BadRequest is the caller's fault: any other ValueError is the server's own
    # (INTERNAL, logged as such), never blamed on the request.
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (LedgerError, grpc.StatusCode.UNAVAILABLE),
)
#: The health of ingesting alone: NOT_SERVING while snapshots cannot be ingested (the
#: disk full, say). The services stay SERVING on the last good index; they are
#: NOT_SERVING only while there is no index at all.
INGEST_HEALTH = "jpki-va.ingest"
#: Whether a balancer should send calls here (responder/rotation.py): NOT_SERVING with
#: no index, behind the newest snapshot for longer than --max-lag, or having refused
#: it. HTTP's GET /health says the same (200 or 503).
ROTATION_HEALTH = "jpki-va.rotation"
LEDGER_SYNC_SECONDS = 1.0  # how much of the counts a machine crash could lose
READY_TIMEOUT = 60.0
KILL_AFTER_GRACE = 5.0  # seconds past the grace period before a stopping worker is ended
#: A worker's young-generation threshold for the cyclic garbage collector: container
#: objects allocated (less those freed) between collections, 700 by default. At 700 a
#: collection came every few served OCSP answers and found the objects of the calls
#: then in flight alive, so it scanned them again as they aged: 4.3-6.5 µs of collector
#: per served OCSP call and 1.4 per unary Check (the bench's profile step). At 10,000
#: most of a call's objects are freed by their counts before one comes: 0.5 and 0.
#: Garbage in cycles waits a little longer, some thousands of objects at most.
GC_YOUNG_THRESHOLD = 10_000


def load_anchors(config: ResponderConfig) -> list[x509.Certificate]:
    anchors: list[x509.Certificate] = []
    for path in config.trust_anchors:
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            anchors.extend(x509.load_pem_x509_certificates(data))
        else:
            anchors.append(x509.load_der_x509_certificate(data))
    return anchors


def _host(listen: str) -> str:
    return listen.rsplit(":", 1)[0].strip("[]")


def _resolve_port(listen: str) -> int:
    port = int(listen.rsplit(":", 1)[1])
    if port:
        return port
    # Every worker must bind the same port, so pick a free one before they start.
    with socket.socket(socket.AF_INET6 if ":" in _host(listen) else socket.AF_INET) as s:
        s.bind((_host(listen), 0))
        return int(s.getsockname()[1])


class PortTaken(OSError):
    """Another process holds a port this responder would serve on."""


class PortClaim:
    """This supervisor's exclusive hold on a TCP port its workers share.

    SO_REUSEPORT lets any process of the same user join a port, so the kernel cannot
    tell this supervisor's workers from a second responder's. The claim is an abstract
    Unix socket named after the port: unique on the host (network namespace), released
    by the kernel when the supervisor exits however it exits, and independent of the
    state directory (a twin may use another one). A probe bind also refuses a port a
    process not using SO_REUSEPORT listens on, before any worker starts.
    """

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self._lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._lock.bind(f"\0jpki-va-responder-tcp-port-{port}")
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind((host, port))
        except OSError as exc:
            self._lock.close()
            raise PortTaken(f"port {port} is held by another process ({exc.strerror})") from exc

    def release(self) -> None:
        self._lock.close()


def ocsp_responder(
    config: ResponderConfig,
    source: StatusSource,
    holder: IndexHolder,
    keystore: OcspKeyStore,
    clock: Clock,
    metrics: WorkerMetrics,
    store: PreproducedStore | None,
) -> tuple[OcspResponder, ResponseCache]:
    """The worker's OCSP responder and its signed-response cache (also what the
    bench's in-process miss step measures, wired the same)."""
    cache = ResponseCache(
        holder.generation,
        max_bytes=config.ocsp_cache_mb * 1024 * 1024,
        refresh_margin=config.ocsp_cache_margin,
    )
    # Per answer the signer is taken as last loaded (no stat of its file): loaded here
    # before the first call, then kept fresh by the worker's loop (`keystore.current`).
    keystore.current()
    responder = OcspResponder(
        source,
        Resolver(holder),
        keystore.latest,
        clock,
        cache=cache,
        store=store,
        limits=OcspLimits(config.max_ocsp_request_bytes, config.max_ocsp_cert_ids),
        observer=metrics,
    )
    return responder, cache


def _purge_ledger(ledger: Ledger, config: ResponderConfig, now: datetime) -> date:
    """保存期間 of the project's own records: counts and disclosures past retention go."""
    try:
        counts, audit = ledger.purge(
            local_day(now - timedelta(seconds=config.retention_ledger)),
            now - timedelta(seconds=config.retention_audit),
        )
    except LedgerError as exc:
        log.warning("cannot purge the ledger past retention: %s", exc)
    else:
        if counts or audit:
            log.info("purged past retention: %d provision counts, %d disclosures", counts, audit)
    return local_day(now)


def worker_main(  # noqa: PLR0915 (a composition root: the wiring reads best in one place)
    config: ResponderConfig,
    slot: int,
    port: int,
    http_port: int | None,
    ready: Any,
    ingest_failing: Any,
    in_rotation: Any,
) -> None:
    """One worker process: gRPC and, when configured, HTTP OCSP and CRLs.

    `slot` (0..workers-1, kept by a restarted worker) names the provision-ledger
    shard this worker alone writes: workers sharing one environment would queue on
    its write lock for every answer. `ingest_failing` and `in_rotation` are the
    supervisor's shared flags (RawValues: no lock a dying process could keep) for the
    ingest and rotation health entries.

    SIGTERM (from the supervisor) stops it gracefully. Not a shared
    multiprocessing.Event: a worker killed while waiting on one leaves its condition
    waiting for that worker forever, and set() would never return.
    """
    stop = threading.Event()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    # Our own files get their modes where they are made (private_files); this is for
    # the metric files prometheus-client makes with the process's umask. A worker
    # makes nothing another user should open.
    os.umask(0o077)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    stop_on_signals(stop, (signal.SIGTERM,))
    configure("responder-worker")  # the supervisor's format, from the environment
    try:
        # Dies with the supervisor: nobody else keeps its index fresh (issue 15, item 2).
        tie_to_parent(stop.set, deadline=config.grace_seconds + KILL_AFTER_GRACE)
    except ParentGone as exc:
        log.warning("%s; not serving", exc)
        return
    # One per process, so both transports' refusals share the bound.
    refusals = RefusalLog(logging.getLogger("jpki_va.server.refusals"))
    # Before anything is opened: every connection is a descriptor (app/descriptors.py).
    limit = descriptors.raise_limit()
    caps = descriptors.connection_caps(config, limit)
    log.info(
        "open files limit %d: up to %d gRPC and %d HTTP connections", limit, caps.grpc, caps.http
    )
    clock = SystemClock()
    metrics = WorkerMetrics()
    holder = IndexHolder(config.index_dir)
    holder.refresh()
    keystore = OcspKeyStore(config.ocsp_dir)
    ledger = open_shard(config.ledger_dir, slot)
    archive = CrlArchive(config.crl_archive_dir)
    source = IssuerCompromiseSource(IndexStatusSource(holder), holder)
    resolver = Resolver(holder)
    # The replica's pre-produced responses: shared by its workers through the page cache.
    store = PreproducedStore(config.state_dir) if config.ocsp_preproduce else None
    ocsp, cache = ocsp_responder(config, source, holder, keystore, clock, metrics, store)
    crl_files = CrlFiles(holder, archive)
    roots = load_anchors(config)
    ca_files = CaFiles(holder, roots)
    # Each answer is counted by an add to its key's counter cell before it leaves.
    gate = Gate(holder.verifiers, ledger, clock)
    proxies = (
        TrustedProxies.of_certificates(config.trusted_proxy_ders())
        if config.trusted_proxy_certs
        else None
    )
    caller = caller_function(
        insecure_loopback=config.insecure_loopback,
        default_verifier=config.loopback_verifier,
        proxies=proxies,
    )
    # Streams on threads of their own, within bounds: unary calls always find a thread.
    limiter = StreamLimiter(
        StreamBudget(config.max_streams, config.max_streams_per_caller, config.stream_idle),
        functools.partial(
            stream_owner, insecure_loopback=config.insecure_loopback, proxies=proxies
        ),
        lambda method, code: metrics.grpc_call(method, code, 0.0),
    )
    server = server_common.build_server(
        max_workers=config.grpc_threads,
        mapping=STATUS_ERRORS,
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            # Past it grpc closes a new connection at once (it sheds no idle one).
            ("grpc.max_allowed_incoming_connections", caps.grpc),
        ],
        served_by=str(os.getpid()),
        interceptors=[limiter, MetricsInterceptor(metrics)],  # the limiter outermost
        refusals=refusals,
    )
    stream_limits = StreamLimits(config.max_batch, config.max_stream_batches)
    counted = CountedSource(source, metrics)
    add_status_service(
        StatusServicer(counted, resolver, ocsp, holder, clock, roots, gate, caller, stream_limits),
        server,
    )
    # A heartbeat well within the idle time keeps a watch that is read from being ended.
    feed = RevocationFeed(
        holder,
        max_watches=config.max_watches,
        heartbeat_seconds=min(HEARTBEAT_SECONDS, config.stream_idle / 2),
    )
    crl_pb2_grpc.add_CrlServiceServicer_to_server(
        CrlServicer(crl_files, gate, caller, feed, ca_files), server
    )
    mapping_pb2_grpc.add_MappingServiceServicer_to_server(
        MappingServicer(Mapper(holder, counted, clock), gate, caller), server
    )
    record_pb2_grpc.add_RecordServiceServicer_to_server(
        RecordServicer(SigningRecords(holder, source, clock), gate, caller), server
    )
    verifiers_pb2_grpc.add_VerifierTokenServiceServicer_to_server(
        VerifierTokenServicer(TokenChecker(roots, holder.verifiers, clock), gate, caller),
        server,
    )
    health = server_common.add_health_and_reflection(server, SERVICES)
    credentials = None if config.tls is None else server_credentials(*config.tls.read())
    server_common.bind(server, f"{config.listen.rsplit(':', 1)[0]}:{port}", credentials)
    server.start()
    http = None
    if config.http_listen is not None and http_port is not None:
        access = HttpAccess(
            ocsp,
            crl_files,
            ca_files,
            gate,
            config.loopback_verifier,
            refusals,
            tls=config.http_tls,
            cache=cache,
        )
        app = HttpApp(
            access,
            max_request_bytes=config.max_ocsp_request_bytes,
            observer=metrics,
            health=lambda: bool(in_rotation.value),
        )
        tls = None if not config.http_tls or config.tls is None else config.tls
        http = HttpServer(
            app,
            _host(config.http_listen),
            http_port,
            max_connections=caps.http,
            tls=None if tls is None else server_tls(tls.cert, tls.key, tls.client_ca),
            timing=metrics,
            proxies=proxies,
        )
        http.start()
    serving = holder.loaded
    server_common.set_serving(health, SERVICES, serving)
    ingest_ok = not ingest_failing.value
    server_common.set_part_serving(health, INGEST_HEALTH, ingest_ok)
    rotating = bool(in_rotation.value)
    server_common.set_part_serving(health, ROTATION_HEALTH, rotating)
    ready.put(port)
    synced = time.monotonic()
    signer = keystore.current()
    purged: date | None = None  # the JST day this worker last purged its ledger shard
    while not stop.wait(0.2):
        if local_day(clock.now()) != purged:
            purged = _purge_ledger(ledger, config, clock.now())
        metrics.cache_size(len(cache), cache.bytes_kept)
        metrics.flush()
        if store is not None:
            _write_through(store, ocsp)
        refusals.flush()
        holder.refresh()
        if keystore.current() is not signer:
            # A rotated OCSP key: answers come from the new one from now on.
            signer = keystore.current()
            cache.invalidate()
        if holder.loaded and not serving:
            serving = True
            server_common.set_serving(health, SERVICES, True)
        if ingest_ok == bool(ingest_failing.value):
            ingest_ok = not ingest_ok
            server_common.set_part_serving(health, INGEST_HEALTH, ingest_ok)
        if rotating != bool(in_rotation.value):
            rotating = not rotating
            server_common.set_part_serving(health, ROTATION_HEALTH, rotating)
        if time.monotonic() - synced > LEDGER_SYNC_SECONDS:
            ledger.sync()
            synced = time.monotonic()
    # Health first, so balancers stop sending; watches end with where to resume (they
    # would hold the grace period to its end); then let in-flight calls finish.
    server_common.set_serving(health, SERVICES, False)
    server_common.set_part_serving(health, ROTATION_HEALTH, False)
    feed.close()
    if http is not None:
        http.stop()
    server.stop(config.grace_seconds).wait()
    limiter.close()
    metrics.flush()
    refusals.flush(final=True)
    ledger.sync()
    ledger.close()
    archive.close()
    if store is not None:
        _write_through(store, ocsp)
        store.close()
    holder.close()


def _write_through(store: PreproducedStore, ocsp: OcspResponder) -> None:
    """What the worker signed live since the last round, into the store in one
    transaction (off the request path): the next worker asked finds it."""
    written = ocsp.written()
    if not written:
        return
    try:
        store.put_many(written)
    except lmdb.Error as exc:  # the answers went out; only the reuse is lost
        log.warning("cannot keep %d live-signed OCSP responses: %s", len(written), exc)


@dataclass(frozen=True)
class RenewalNeeds:
    """What renewing the delegated OCSP certificates asks of an index: read once per
    index state, since opening an index parses all its CRLs' metadata (a national
    index's thousands take the supervisor a good part of a second on a busy host)."""

    issuer_ids: frozenset[bytes]
    must_cover: datetime | None


def renewal_needs(index: Index) -> RenewalNeeds:
    # A compromised generation gets no new delegated certificate (第14条).
    return RenewalNeeds(
        frozenset(set(index.issuers) - set(index.compromises)), index.latest_next_update
    )


def renew_ocsp_certificates(
    config: ResponderConfig,
    keystore: OcspKeyStore,
    clock: Clock,
    index_path: Path | None = None,
    *,
    needs: RenewalNeeds | None = None,
) -> bool:
    """Rotate to a new delegated key and certificates when renewal is due.

    Due when an issuer the index serves has no certificate, or one reached the
    ``ocsp_renew_at`` point of its life, or one would expire before the latest
    nextUpdate the responder answers with: renewing early is what keeps every
    response's signer certificate valid past the response's nextUpdate. `needs`, when
    given, stands for the index (read from it already).
    """
    if config.signer is None:
        return False
    if needs is None:
        path = index_path or current_index(config.index_dir)
        if path is None:
            return False
        index = Index(path)
        try:
            needs = renewal_needs(index)
        finally:
            index.close()
    issuer_ids, must_cover = set(needs.issuer_ids), needs.must_cover
    if not keystore.needs_renewal(
        issuer_ids, clock.now(), config.ocsp_renew_at, must_cover=must_cover
    ):
        return False

    def certify(csr_der: bytes) -> list[x509.Certificate]:
        assert config.signer is not None
        tls = config.signer_credentials()
        channel = (
            grpc.insecure_channel(config.signer)
            if tls is None
            else grpc.secure_channel(config.signer, grpc.ssl_channel_credentials(*tls))
        )
        with channel:
            reply = signer_pb2_grpc.SignerServiceStub(channel).IssueOcspSignerCertificate(
                signer_pb2.IssueOcspSignerCertificateRequest(
                    csr_der=csr_der, issuer_key_ids=sorted(issuer_ids)
                ),
                timeout=30,
            )
        return [x509.load_der_x509_certificate(c.certificate_der) for c in reply.certificates]

    signer = keystore.rotate(certify)
    log.info("stored %d delegated OCSP-signer certificates", len(signer.certificates))
    return True


class Responder:
    """The supervising process: ingest, renew, start and watch the workers."""

    def __init__(self, config: ResponderConfig, clock: Clock | None = None) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._ctx = multiprocessing.get_context("spawn")
        self._verifier = SnapshotVerifier(load_anchors(config), self._clock)
        self._archive = CrlArchive(config.crl_archive_dir)
        # The responder's own metrics registry (served by whoever exposes metrics).
        self.metrics_registry = CollectorRegistry()
        register_build_info(self.metrics_registry, "responder")
        self.ingest_metrics = IngestMetrics(self.metrics_registry)
        self._ingest_failing = self._ctx.RawValue("b", 0)  # read by the workers' health
        self._in_rotation = self._ctx.RawValue("b", 0)  # likewise
        self._rotation = Rotation(config.max_lag)
        self.store = open_store(config.store, config.snapshot_dir)
        stage = None
        snapshots = self.store.local_root
        if snapshots is None:  # a remote store: staged in the state directory
            snapshots = config.staging_dir
            stager = Stager(self.store, snapshots)
            self.metrics_registry.register(stager)
            stage = stager.stage
            # A store with a pointer (S3's `latest`) is watched by it; any other is scanned.
            self._notice: SnapshotNotice = (
                self.store if isinstance(self.store, SnapshotNotice) else PollOnly()
            )
        else:
            self._notice = DirectoryNotice(snapshots)
        self.ingest_health = IngestHealth(
            config.index_dir, config.poll_interval, on_change=self._ingest_changed
        )
        self.metrics_registry.register(self.ingest_health)
        self._ingester = Ingester(
            snapshots,
            config.index_dir,
            self._verifier,
            self._archive,
            (self._clock, timedelta(seconds=config.retention_crl_file)),
            metrics=self.ingest_metrics,
            before_publish=self._certify_for,
            health=self.ingest_health,
            stage=stage,
        )
        self._keystore = OcspKeyStore(config.ocsp_dir)
        self._collector = ResponderCollector(
            self._clock, per_partition=config.metrics_per_partition
        )
        self._collector.ocsp_signer_from(self._keystore.current)
        self._collector.rotation_from(
            lambda: (bool(self._in_rotation.value), self._ingester.newest)
        )
        self._observed = False  # the collector has the live index's state
        self._marker = b""  # the store's pointer, read before the start's scan
        self._renewal: RenewalNeeds | None = None  # and this is its renewal's part
        self._metrics_server: MetricsServer | None = None
        self._ready = self._ctx.Queue()
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self._producer: multiprocessing.process.BaseProcess | None = None
        self._store: PreproducedStore | None = None  # opened when asked about
        self._claims: list[PortClaim] = []
        self._state_lock: DirectoryLock | None = None
        self.port = 0
        self.http_port: int | None = None
        self.metrics_port: int | None = None

    @property
    def collector(self) -> ResponderCollector:
        """Where the composition root adds what it counts (provisions, ...)."""
        return self._collector

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for operators' tooling and the bench)."""
        return [p.pid for p in self._workers if p.pid is not None and p.is_alive()]

    def _ingest_changed(self, condition: IngestCondition) -> None:
        self._ingest_failing.value = int(condition.failing)

    def _spawn(self, slot: int) -> multiprocessing.process.BaseProcess:
        # The worker's parent-death signal fires when the *thread* spawning it ends:
        # spawn only from the threads that run start() and run(), which last as long
        # as this supervisor serves.
        proc = self._ctx.Process(
            target=worker_main,
            args=(
                self.config,
                slot,
                self.port,
                self.http_port,
                self._ready,
                self._ingest_failing,
                self._in_rotation,
            ),
            name="jpki-va-worker",
        )
        proc.start()
        return proc

    def _spawn_producer(self) -> None:
        if self.config.ocsp_preproduce:
            self._producer = self._ctx.Process(
                target=producer_main, args=(self.config,), name="jpki-va-ocsp-producer"
            )
            self._producer.start()

    def preproduced(self) -> dict[str, Any]:
        """The OCSP producer's progress (`Pass.state`), with the live index's name as
        `live` (a pass is over the live index when its `index` is that name)."""
        if not self.config.ocsp_preproduce:
            return {}
        if self._store is None:
            self._store = PreproducedStore(self.config.state_dir)
        return self._store.progress(self.config.index_dir)

    def _certify_for(self, index_path: Path) -> None:
        renew_ocsp_certificates(self.config, self._keystore, self._clock, index_path)

    def _housekeeping(self) -> None:
        started = time.perf_counter()
        try:
            if self._ingester.poll_once() is not None:
                self._collector.ingested(time.perf_counter() - started)
                self._observed = False
        except Exception:
            log.exception("ingest failed; will retry")
        try:
            if not self._observed:
                self._observe_index()
            if self._renewal is not None:
                renew_ocsp_certificates(
                    self.config, self._keystore, self._clock, needs=self._renewal
                )
        except (grpc.RpcError, OSError, ValueError, lmdb.Error) as exc:
            # lmdb.Error: the index is open elsewhere in this process; next round.
            log.warning("cannot read the index or renew OCSP-signer certificates: %s", exc)
        self._judge_rotation()

    def _judge_rotation(self) -> None:
        """Set the workers' rotation flag; say so when it changes."""
        try:
            live = self._ingester.sequence if current_index(self.config.index_dir) else None
        except (OSError, lmdb.Error) as exc:
            # A new index open elsewhere in this process for a moment: the next tick.
            log.debug("cannot read the live sequence now: %s", exc)
            return
        state = self._rotation.judge(live, self._ingester.newest, self._ingester.newest_refused)
        if state.in_rotation != bool(self._in_rotation.value):
            self._in_rotation.value = int(state.in_rotation)
            if state.in_rotation:
                log.warning("back in rotation: the index reflects snapshot %s", live)
            else:
                log.warning("out of rotation: %s", state.reason)

    def _observe_index(self) -> None:
        """Hand the metrics the live index's state, and keep what the OCSP-signer
        renewal needs of it, both read in one opening (once per index state, not every
        housekeeping round: the supervisor stays free to learn of the next snapshot);
        the index is open only meanwhile."""
        path = current_index(self.config.index_dir)
        if path is None:
            return
        index = Index(path)
        try:
            state = IndexState(index.sequence, index.created_at, index.current_crls)
            renewal = renewal_needs(index)
        finally:
            index.close()
        self._collector.index_state(state)
        self._renewal = renewal
        self._observed = True

    def _claim(self, listen: str) -> int:
        claim = PortClaim(_host(listen), _resolve_port(listen))
        self._claims.append(claim)
        return claim.port

    def start(self) -> int:
        # Connection caps that do not fit under the descriptor limit its workers will
        # have: refused before anything is held.
        descriptors.connection_caps(self.config, descriptors.attainable_limit())
        try:
            # One supervisor per state directory, so what a killed one left is ours to clear.
            self._state_lock = DirectoryLock(self.config.state_dir, "responder")
            # Only this supervisor's workers may share the ports (SO_REUSEPORT).
            self.port = self._claim(self.config.listen)
            if self.config.http_listen is not None:
                self.http_port = self._claim(self.config.http_listen)
            claim_shards(self.config.ledger_dir, self.config.workers)
        except BaseException:
            self._release_claims()  # a refused start holds nothing
            raise
        for name in prune_abandoned_builds(self.config.index_dir):
            log.info("removed %s, left by an index build that did not finish", name)
        live = current_index(self.config.index_dir)
        if live is not None and upgrade_index(live):  # before any worker opens it
            log.info("upgraded index %s to the current layout", live.name)
        prepare_multiprocess_dir(self.config.metrics_dir)
        # The pointer before the first scan, not when `run` begins: a snapshot committed
        # while the workers start then moves it, and is scanned for at once.
        self._marker = self._notice.marker()
        self._housekeeping()
        self._workers = [self._spawn(slot) for slot in range(self.config.workers)]
        for _ in self._workers:
            self._ready.get(timeout=READY_TIMEOUT)
        self._spawn_producer()
        listener = self.config.metrics_listener
        if listener is not None:
            self._metrics_server = MetricsServer(
                listener,
                self.config.metrics_dir,
                [self._collector, self.metrics_registry],
            )
            self.metrics_port = self._metrics_server.port
        log.info(
            "responder serving gRPC on %s:%d, HTTP on %s, metrics on %s, with %d workers",
            _host(self.config.listen),
            self.port,
            self.http_port,
            self.metrics_port,
            len(self._workers),
        )
        return self.port

    def run(self, stop: threading.Event) -> None:
        """Scan the store when its pointer moves, and every poll interval anyway."""
        marker = self._marker
        next_scan = time.monotonic() + self.config.poll_interval
        tick = min(self.config.notice_interval, self.config.poll_interval)
        while not stop.wait(tick):
            now_marker = self._notice.marker()
            if now_marker != marker or time.monotonic() >= next_scan:
                marker = now_marker
                self._housekeeping()
                next_scan = time.monotonic() + self.config.poll_interval
            else:
                self._judge_rotation()  # the lag grows while nothing arrives
            for i, proc in enumerate(self._workers):
                if not proc.is_alive():
                    log.error("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                    if proc.pid is not None:
                        mark_worker_dead(proc.pid, self.config.metrics_dir)
                    self._workers[i] = self._spawn(i)  # its slot: its ledger shard
                    with contextlib.suppress(Exception):
                        self._ready.get(timeout=READY_TIMEOUT)
            producer = self._producer
            if producer is not None and not producer.is_alive():
                log.error("OCSP producer exited with %s; starting another", producer.exitcode)
                if producer.pid is not None:
                    mark_worker_dead(producer.pid, self.config.metrics_dir)
                self._spawn_producer()

    def shutdown(self) -> None:
        processes = [*self._workers, *([] if self._producer is None else [self._producer])]
        self._producer = None
        for proc in processes:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: health NOT_SERVING, drain, close
        for proc in processes:
            proc.join(self.config.grace_seconds + KILL_AFTER_GRACE)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            if proc.pid is not None:
                mark_worker_dead(proc.pid, self.config.metrics_dir)
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        self._archive.close()
        if self._store is not None:
            self._store.close()
            self._store = None
        self._release_claims()

    def _release_claims(self) -> None:
        for claim in self._claims:
            claim.release()
        self._claims = []
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None


def serve(
    config: ResponderConfig,
    *,
    stop: threading.Event | None = None,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM when run from the main thread)."""
    stop = stop or threading.Event()
    stop_on_signals(stop)
    responder = Responder(config)
    try:
        port = responder.start()
        if ready is not None:
            ready(port)
        responder.run(stop)
    finally:
        responder.shutdown()
