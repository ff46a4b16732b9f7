"""The signer's composition root: config in, a running SignerService out."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from cryptography import x509
from grpc_health.v1.health import HealthServicer

from jpki_va import hsm
from jpki_va.core.clock import Clock, SystemClock
from jpki_va.core.oids import ARC, ENV_ARC
from jpki_va.protos import signer_pb2, signer_pb2_grpc
from jpki_va.server.access.gate import NotOperator, Operators
from jpki_va.server.app.config import ConfigError, SignerConfig
from jpki_va.server.app.dir_lock import DirectoryLock
from jpki_va.server.app.signals import stop_on_signals, wait_for_stop
from jpki_va.server.app.store_config import open_store
from jpki_va.server.app.sweep_schedule import SweepSchedule
from jpki_va.server.base.metrics_http import serve_metrics
from jpki_va.server.base.refusal_log import RefusalLog
from jpki_va.server.law.entitlements import NotEntitled
from jpki_va.server.ledger.provisions import Ledger, local_day, mark_signer_ledger
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.registry.transactions import Registry, RegistryError
from jpki_va.server.responder.status import BadRequest
from jpki_va.server.rpc import server_common
from jpki_va.server.rpc.identity import caller_function, fingerprint, server_credentials
from jpki_va.server.rpc.signer_servicer import SignerServicer
from jpki_va.server.signer.authority import Authority, AuthorityError
from jpki_va.server.signer.ceremony import bootstrap
from jpki_va.server.signer.metrics import SignerMetrics
from jpki_va.server.signer.notice_delivery import (
    NoticeChannel,
    NoticeDispatcher,
    SpoolChannel,
    WebhookChannel,
)
from jpki_va.server.signer.publish_status import PublishStatus
from jpki_va.server.signer.publisher import Publisher
from jpki_va.server.signer.registry_backup import (
    BackupRecord,
    BackupSchedule,
    BackupStore,
    backup_registry,
)
from jpki_va.server.signer.service import (
    Conflict,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    Signer,
)
from jpki_va.server.signer.signing_queue import Overloaded, SigningQueue
from jpki_va.server.signer.verifier_registry import NotAVerifier, VerifierRegistry
from jpki_va.server.snapshot.store import SnapshotStore, StoreUnavailable
from jpki_va.server.snapshot.writer import prune_abandoned

log = logging.getLogger(__name__)

_OID_ARC = "oid_arc"  # registry meta: the arc of the first start

SERVICE = signer_pb2.DESCRIPTOR.services_by_name["SignerService"].full_name
#: The health of publishing alone. An HSM or disk that fails publishing leaves the
#: SignerService SERVING: it still records changes durably (a loss recorded now is
#: published the moment publishing recovers) and answers, and NOT_SERVING would make
#: balancers and orchestrators drop or restart a signer that a restart cannot mend.
PUBLISH_HEALTH = "jpki-va.publish"

SIGNER_ERRORS: server_common.ErrorMap = (
    (NotOperator, grpc.StatusCode.PERMISSION_DENIED),
    (NotAVerifier, grpc.StatusCode.PERMISSION_DENIED),
    (NotEntitled, grpc.StatusCode.PERMISSION_DENIED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),  # malformed wire values
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (AuthorityError, grpc.StatusCode.FAILED_PRECONDITION),
    (RegistryError, grpc.StatusCode.FAILED_PRECONDITION),
    # The token is there but the key is not: the ceremony's business, not a retry's.
    (hsm.KeyNotFound, grpc.StatusCode.FAILED_PRECONDITION),
    # The signer answers but its HSM does not: not "unreachable" (see server_common.CAUSE).
    (hsm.HsmError, grpc.StatusCode.UNAVAILABLE, server_common.HSM_UNAVAILABLE),
    # Its snapshot store does not answer: nothing was published (the change is recorded).
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE, server_common.STORE_UNAVAILABLE),
)


class _PublishWatch:
    """Publish outcomes to the metrics and to the health of the publish part."""

    def __init__(self, metrics: SignerMetrics) -> None:
        self._metrics = metrics
        self.health: HealthServicer | None = None  # set once the server has one

    def published(self) -> None:
        self._metrics.published()
        if self.health is not None:
            server_common.set_part_serving(self.health, PUBLISH_HEALTH, True)

    def publish_failed(self, cause: str) -> None:
        self._metrics.publish_failed(cause)
        if self.health is not None:
            server_common.set_part_serving(self.health, PUBLISH_HEALTH, False)


@dataclass
class SignerApp:
    """Everything the signer process owns, for an orderly start and stop."""

    config: SignerConfig
    token: hsm.Hsm
    registry: Registry
    ledger: Ledger
    signer: Signer
    server: grpc.Server
    port: int
    health: object
    metrics: SignerMetrics
    refusals: RefusalLog
    _stop: threading.Event
    _lock: DirectoryLock
    _publisher_thread: threading.Thread | None = None
    # Set by every registry commit (and by stop), to wake the publisher.
    _publish_wake: threading.Event = field(default_factory=threading.Event)
    _sweep: SweepSchedule | None = None
    _notices: threading.Thread | None = None
    _backups: BackupSchedule | None = None
    _metrics_server: Any = None
    metrics_port: int | None = None

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        server_common.set_serving(self.health, [SERVICE], False)  # type: ignore[arg-type]
        self.server.stop(grace).wait()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._publisher_thread is not None:
            self._publish_wake.set()  # it waits for a commit, not for the stop
            self._publisher_thread.join()
        if self._sweep is not None:
            self._sweep.stop()
        if self._notices is not None:
            self._notices.join()
        if self._backups is not None:
            self._backups.stop()
        self.registry.close()
        self.ledger.close()
        self.token.close()
        self.refusals.flush(final=True)
        self._lock.release()

    def wait(self) -> None:
        self.server.wait_for_termination()


def _publish_status(
    publisher: Publisher, clock: Clock, metrics: SignerMetrics
) -> tuple[PublishStatus, _PublishWatch]:
    watch = _PublishWatch(metrics)
    status = PublishStatus(clock, publisher.last_published_at(), watch)
    metrics.publish_age_from(status.age)
    return status, watch


def _operators(config: SignerConfig) -> Operators:
    if config.tls is None:
        return Operators(None)
    prints: set[bytes] = set()
    for path in config.operator_certs:
        try:
            prints.update(
                fingerprint(c) for c in x509.load_pem_x509_certificates(path.read_bytes())
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--operator-cert {path}: {exc}") from None
    return Operators(frozenset(prints))


def _hold_data_dir(
    config: SignerConfig, metrics: SignerMetrics
) -> tuple[DirectoryLock, hsm.Hsm, SnapshotStore]:
    """The data directory, held for this signer alone and cleared of leftovers; the token.

    One signer per data directory (and store): the registry's only writer and the
    snapshots' only publisher, so what a killed one left there is this one's to clear.
    """
    store = open_store(config.store, config.snapshot_dir)
    lock = DirectoryLock(config.data_dir, "signer")
    try:
        abandoned = prune_abandoned(config.snapshot_dir)
        if store.local_root != config.snapshot_dir:
            try:
                abandoned += store.clear_abandoned()
            except StoreUnavailable as exc:  # cleared at the next start; no reader sees it
                log.warning("cannot clear unfinished uploads now: %s", exc)
        for name in abandoned:
            log.info("removed %s, left by a publish that did not finish", name)
        return lock, hsm.Hsm.open(config.hsm, observer=metrics), store
    except BaseException:
        lock.release()
        raise


def _serve_metrics(config: SignerConfig, metrics: SignerMetrics) -> Any:
    listener = config.metrics_listener
    if listener is None:
        return None
    server, _ = serve_metrics(listener, metrics.registry)
    tls = " over TLS" if listener.tls else ""
    log.info("signer metrics on %s:%d/metrics%s", listener.host, server.server_port, tls)
    return server


def registry_arc_check(registry: Registry) -> None:
    """Keep the private OID arc fixed for the registry's life (jpki_va.core.oids).

    The first start records it; a later start under another arc would sign loss
    causes that the responders, still reading the old CRLs, could not tell apart.
    """
    with registry.write() as wtx:
        recorded = wtx.meta(_OID_ARC)
        if recorded is None:
            wtx.set_meta(_OID_ARC, ARC.encode())
            return
    if recorded.decode() != ARC:
        raise ConfigError(
            f"this registry's OID arc is {recorded.decode()}, not {ARC}: "
            f"set {ENV_ARC}={recorded.decode()} (the arc is fixed for a deployment)"
        )


def _authority(token: hsm.Hsm, registry: Registry, config: SignerConfig) -> Authority:
    authority = Authority(token, registry)
    try:
        authority.root()  # refuse to start without a hierarchy
    except AuthorityError:
        raise ConfigError(
            f"{config.data_dir} holds no CA hierarchy: start the signer once with "
            "--bootstrap, or run the key ceremony (jpki-va hsm ceremony run CONFIG "
            f"--data-dir {config.data_dir})"
        ) from None
    registry_arc_check(registry)
    return authority


def _grpc_server(config: SignerConfig, refusals: RefusalLog) -> grpc.Server:
    return server_common.build_server(
        max_workers=config.grpc_workers,
        mapping=SIGNER_ERRORS,
        maximum_concurrent_rpcs=config.grpc_workers,
        refusals=refusals,
        # grpc sets SO_REUSEPORT by default: a second process could then bind the
        # signer's port too and take part of its calls. One signer, one listener;
        # a port already taken is an error at start.
        options=[("grpc.so_reuseport", 0)],
    )


def _undo_start(
    metrics_server: Any, registry: Registry, ledger: Ledger, token: hsm.Hsm, lock: DirectoryLock
) -> None:
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    registry.close()
    ledger.close()
    token.close()
    lock.release()


def start_signer(config: SignerConfig, clock: Clock | None = None) -> SignerApp:
    clock = clock or SystemClock()
    operators = _operators(config)
    credentials = None if config.tls is None else server_credentials(*config.tls.read())
    metrics = SignerMetrics()
    refusals = RefusalLog(logging.getLogger("jpki_va.server.refusals"))
    lock, token, store = _hold_data_dir(config, metrics)
    registry = Registry(config.registry_dir)
    ledger = Ledger(config.ledger_dir)
    mark_signer_ledger(config.ledger_dir)
    metrics_server = None
    server: grpc.Server | None = None
    started = False
    try:
        # The ports are claimed before the ceremony: a start that cannot listen must
        # not leave new keys in the token. Calls wait in the backlog until start().
        server = _grpc_server(config, refusals)
        port = server_common.bind(server, config.listen, credentials)
        metrics_server = _serve_metrics(config, metrics)
        if config.bootstrap:
            records = config.data_dir / "ceremonies"
            for created in bootstrap(
                token, registry, clock, record_dir=records, base_url=config.base_url
            ):
                log.info("created %s", created)
        authority = _authority(token, registry, config)
        settings = ProfileSettings(base_url=config.base_url)
        publisher = Publisher(
            registry,
            authority,
            config.snapshot_dir,
            clock,
            settings,
            config.retention_policy,
            store,
        )
        queue = SigningQueue(config.sign_queue_limit, config.sign_queue_wait, observer=metrics)
        status, watch = _publish_status(publisher, clock, metrics)
        signer = Signer(registry, authority, publisher, clock, settings, queue, status)
        verifiers = VerifierRegistry(registry, authority, ledger, clock)
        caller = caller_function(insecure_loopback=config.insecure_loopback)
        signer_pb2_grpc.add_SignerServiceServicer_to_server(
            SignerServicer(signer, verifiers, operators, caller), server
        )
        health = server_common.add_health_and_reflection(server, [SERVICE])
        server_common.set_part_serving(health, PUBLISH_HEALTH, not status.state().failing)
        watch.health = health
        server.start()
        started = True
    except BaseException:
        if server is not None and not started:
            server_common.release(server)
        _undo_start(metrics_server, registry, ledger, token, lock)
        raise
    server_common.set_serving(health, [SERVICE], True)
    stop = threading.Event()
    app = SignerApp(
        config, token, registry, ledger, signer, server, port, health, metrics, refusals, stop, lock
    )
    if metrics_server is not None:
        app._metrics_server = metrics_server
        app.metrics_port = int(metrics_server.server_port)
    _start_background(app, clock, store)
    log.info("signer listening on %s", config.listen.rsplit(":", 1)[0] + f":{port}")
    return app


def _start_background(app: SignerApp, clock: Clock, store: SnapshotStore) -> None:
    """The periodic publisher (when it has an interval), the 00:00 JST sweep and purge,
    the notices' delivery, and the registry's backups (to a store that keeps them)."""
    if app.config.delta_interval > 0:
        app.registry.watch(app._publish_wake.set)
        app._publisher_thread = _start_publishing(
            app.signer, app.config, app._stop, app._publish_wake
        )
    # On its own schedule, also when publishing happens only on request.
    app._sweep = SweepSchedule(
        functools.partial(_midnight, app, clock), clock, app.config.sweep_check
    )
    app._sweep.start()
    app._notices = _start_notices(app, clock)
    if isinstance(store, BackupStore) and app.config.backup_interval > 0:
        app._backups = BackupSchedule(
            functools.partial(_backup, app, store, clock), app.config.backup_interval
        )
        app._backups.start()


def _start_notices(app: SignerApp, clock: Clock) -> threading.Thread:
    """The outbox's delivery rounds, and its figures for the metrics."""
    config = app.config
    channel: NoticeChannel = (
        SpoolChannel(config.notice_spool_dir)
        if config.notice_webhook is None
        else WebhookChannel(config.notice_webhook)
    )
    dispatcher = NoticeDispatcher(app.registry, channel, clock)

    def pending() -> tuple[int, float]:
        with app.registry.read() as tx:
            count, oldest = tx.pending_notices()
        age = 0.0 if oldest is None else (clock.now() - oldest.lost_at).total_seconds()
        return count, max(age, 0.0)

    app.metrics.notices_from(lambda: pending()[0], lambda: pending()[1])

    def rounds() -> None:
        while not app._stop.wait(config.notice_delivery_interval):
            try:
                dispatcher.deliver_pending()
            except Exception as exc:  # the registry is busy or failing: next round
                log.warning("notice delivery round failed: %s", exc)

    thread = threading.Thread(target=rounds, name="notices", daemon=True)
    thread.start()
    return thread


def _midnight(app: SignerApp, clock: Clock) -> None:
    """At 00:00 JST: the signer's sweep and registry purge, then its own ledger's."""
    app.signer.midnight()
    retention = app.config.retention_policy
    now = clock.now()
    app.ledger.purge(local_day(now - retention.project("ledger")), now - retention.project("audit"))


def _backup(app: SignerApp, store: BackupStore, clock: Clock) -> BackupRecord:
    try:
        record = backup_registry(app.registry, store, clock, app.config.data_dir / "backups")
    except Exception:
        app.metrics.backup_failed()
        raise
    app.metrics.backed_up(clock.now().timestamp())
    return record


def serve(
    config: SignerConfig,
    *,
    stop: threading.Event | None = None,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT when run from the main thread), then
    stop in order: NOT_SERVING, drain the calls in flight, close registry, ledger and
    token, release the data directory."""
    stop = stop or threading.Event()
    stop_on_signals(stop)  # before the start: a signal during a long bootstrap counts
    app = start_signer(config)
    try:
        if ready is not None:
            ready(app.port)
        wait_for_stop(stop)
        log.info("signer stopping")
    finally:
        app.stop()


def _start_publishing(
    signer: Signer, config: SignerConfig, stop: threading.Event, changed: threading.Event
) -> threading.Thread:
    full_interval = timedelta(seconds=config.full_interval)
    thread = threading.Thread(
        target=_publish_loop,
        args=(
            lambda: signer.publish_scheduled(full_interval),
            stop,
            config.delta_interval,
            changed,
        ),
        name="publisher",
        daemon=True,
    )
    thread.start()
    return thread


def _publish_loop(
    publish: Callable[[], object | None],
    stop: threading.Event,
    interval: float,
    changed: threading.Event,
) -> None:
    """The move-out sweep, then a full or delta snapshot as due: as soon as a registry
    write commits, and every `interval` anyway (a full snapshot falls due, a failed
    publish is tried again); never a snapshot within `interval` of the last one's start.

    Woken by the commit, a loss waits for no tick: commit to delta is the publish
    alone, not up to a whole interval more, while the interval still bounds how often
    the signer publishes (and signs) under a stream of changes.

    A failed publish is logged by the publish status, once per change of state, and
    tried again at the next tick.
    """
    last = -math.inf  # when the last tick that published a snapshot began
    while not stop.is_set():
        changed.wait(interval)
        if stop.wait(max(0.0, last + interval - time.monotonic())):
            return
        # Cleared before the publish: a commit during it brings the next tick (the
        # publish's own commit too, which then finds nothing changed).
        changed.clear()
        began = time.monotonic()
        try:
            if publish() is not None:
                last = began
        except Exception as exc:
            log.debug("periodic publish failed: %s", exc)
