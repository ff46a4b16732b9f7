"""The responder's composition root: one ingester process and N gRPC workers.

Python's GIL makes processes the unit of scale: every worker serves the same port
(SO_REUSEPORT) with its own read-only handle on the live index, which it follows
by polling the `current` pointer. The main process ingests snapshots and keeps the
delegated OCSP-signer certificates fresh; it never serves requests itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import grpc
from cryptography import x509

from protos import signer_pb2, signer_pb2_grpc, va_pb2, va_pb2_grpc
from server import grpc_common
from server.clock import Clock, SystemClock
from server.config import ResponderConfig
from server.index import Index, current_index
from server.ingest import Ingester
from server.ocsp import OcspResponder
from server.ocsp_keys import OcspKeyStore
from server.snapshot import SnapshotVerifier
from server.status import BadRequest, IndexHolder, IndexStatusSource, NotReady, Resolver
from server.status_servicer import StatusServicer

log = logging.getLogger(__name__)

SERVICE = va_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name
STATUS_ERRORS: grpc_common.ErrorMap = (
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
)
READY_TIMEOUT = 60.0


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


def worker_main(config: ResponderConfig, port: int, ready: Any, stop: ProcessEvent) -> None:
    """One gRPC worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(message)s")
    clock = SystemClock()
    holder = IndexHolder(config.index_dir)
    holder.refresh()
    keystore = OcspKeyStore(config.ocsp_dir)
    source = IndexStatusSource(holder)
    resolver = Resolver(holder)
    ocsp = OcspResponder(source, resolver, keystore.current, clock)
    roots = load_anchors(config)
    server = grpc_common.build_server(
        max_workers=config.grpc_threads,
        mapping=STATUS_ERRORS,
        options=[("grpc.so_reuseport", 1)],
    )
    va_pb2_grpc.add_StatusServiceServicer_to_server(
        StatusServicer(source, resolver, ocsp, holder, clock, roots), server
    )
    health = grpc_common.add_health_and_reflection(server, [SERVICE])
    grpc_common.bind(server, f"{config.listen.rsplit(':', 1)[0]}:{port}", None)
    server.start()
    serving = holder.loaded
    grpc_common.set_serving(health, [SERVICE], serving)
    ready.put(port)
    while not stop.wait(0.2):
        holder.refresh()
        if holder.loaded and not serving:
            serving = True
            grpc_common.set_serving(health, [SERVICE], True)
    # Health first, so balancers stop sending; then let in-flight calls finish.
    grpc_common.set_serving(health, [SERVICE], False)
    server.stop(config.grace_seconds).wait()
    holder.close()


def renew_ocsp_certificates(config: ResponderConfig, keystore: OcspKeyStore, clock: Clock) -> bool:
    """Ask the signer for delegated certificates when one is missing or past half-life."""
    if config.signer is None:
        return False
    path = current_index(config.index_dir)
    if path is None:
        return False
    index = Index(path)
    try:
        issuer_ids = set(index.issuers)
    finally:
        index.close()
    if not keystore.needs_renewal(issuer_ids, clock.now()):
        return False
    with grpc.insecure_channel(config.signer) as channel:
        reply = signer_pb2_grpc.SignerServiceStub(channel).IssueOcspSignerCertificate(
            signer_pb2.IssueOcspSignerCertificateRequest(
                csr_der=keystore.csr(), issuer_key_ids=sorted(issuer_ids)
            ),
            timeout=30,
        )
    keystore.store_certificates(
        [x509.load_der_x509_certificate(c.certificate_der) for c in reply.certificates]
    )
    log.info("stored %d delegated OCSP-signer certificates", len(reply.certificates))
    return True


class Responder:
    """The supervising process: ingest, renew, start and watch the workers."""

    def __init__(self, config: ResponderConfig, clock: Clock | None = None) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._ctx = multiprocessing.get_context("spawn")
        self._verifier = SnapshotVerifier(load_anchors(config), self._clock)
        self._ingester = Ingester(config.snapshot_dir, config.index_dir, self._verifier)
        self._keystore = OcspKeyStore(config.ocsp_dir)
        self._ready = self._ctx.Queue()
        self._worker_stop = self._ctx.Event()
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self.port = 0

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for operators' tooling and the bench)."""
        return [p.pid for p in self._workers if p.pid is not None and p.is_alive()]

    def _spawn(self) -> multiprocessing.process.BaseProcess:
        proc = self._ctx.Process(
            target=worker_main,
            args=(self.config, self.port, self._ready, self._worker_stop),
            name="jpki-va-worker",
        )
        proc.start()
        return proc

    def _housekeeping(self) -> None:
        try:
            self._ingester.poll_once()
        except Exception:
            log.exception("ingest failed; will retry")
        try:
            renew_ocsp_certificates(self.config, self._keystore, self._clock)
        except (grpc.RpcError, OSError, ValueError) as exc:
            log.warning("cannot renew OCSP-signer certificates: %s", exc)

    def start(self) -> int:
        self._keystore.key()  # created once here, before workers read it
        self._housekeeping()
        self.port = _resolve_port(self.config.listen)
        self._workers = [self._spawn() for _ in range(self.config.workers)]
        for _ in self._workers:
            self._ready.get(timeout=READY_TIMEOUT)
        log.info(
            "responder serving on %s:%d with %d workers",
            _host(self.config.listen),
            self.port,
            len(self._workers),
        )
        return self.port

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.config.poll_interval):
            self._housekeeping()
            for i, proc in enumerate(self._workers):
                if not proc.is_alive():
                    log.error("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                    self._workers[i] = self._spawn()
                    with contextlib.suppress(Exception):
                        self._ready.get(timeout=READY_TIMEOUT)

    def shutdown(self) -> None:
        self._worker_stop.set()
        for proc in self._workers:
            proc.join(self.config.grace_seconds + 5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def serve(
    config: ResponderConfig,
    *,
    stop: threading.Event | None = None,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM when run from the main thread)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    responder = Responder(config)
    try:
        port = responder.start()
        if ready is not None:
            ready(port)
        responder.run(stop)
    finally:
        responder.shutdown()
