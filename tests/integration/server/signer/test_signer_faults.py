"""The signer under load and HSM faults: back-pressure, recovery, no half-done writes.

Real parts only: the session's SoftHSM2 token, the signer's LMDB registry and its
gRPC server on 127.0.0.1. A slow HSM is made by holding the token's session lock
(what a busy HSM looks like to the signer); faults by closing the session, logging
out or finalising the PKCS#11 library between operations.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from pkcs11.exceptions import PKCS11Error

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2
from jpki_va.server.app.config import SignerConfig
from jpki_va.server.app.signer_app import SignerApp, start_signer
from jpki_va.server.model.registry_values import CertificateRecord
from jpki_va.server.signer.signing_queue import Overloaded, SigningQueue
from jpki_va.server.snapshot.verify import SnapshotVerifier
from tests.support import fresh_key, spki_of, wait_for


def _request(n: int, kind: CertKind = CertKind.CARD_AUTH) -> signer_pb2.IssueCertificateRequest:
    """An application with its own new key pair (a key is certified only once)."""
    return signer_pb2.IssueCertificateRequest(
        kind=int(kind),  # type: ignore[arg-type]
        resident_code=f"{80000000000 + n:011d}",
        municipality_code="131016",
        holder=signer_pb2.HolderInfo(
            name="負荷 試験", address="千代田区1-1", birth_date="1990-01-01", sex="女"
        ),
        public_key_der=spki_of(fresh_key()),
    )


def _start(directory: Path, token: HsmConfig, **settings: object) -> SignerApp:
    return start_signer(
        SignerConfig(
            data_dir=directory,
            hsm=token,
            listen="127.0.0.1:0",
            insecure_loopback=True,
            delta_interval=0,
            bootstrap=True,
            metrics_port=0,
            **settings,  # type: ignore[arg-type]
        )
    )


def _metrics(app: SignerApp) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=10) as r:
        return str(r.read().decode())


# -- the queue alone ---------------------------------------------------------------------


def test_queue_refuses_at_once_when_full_and_after_max_wait() -> None:
    queue = SigningQueue(limit=1, max_wait=0.2)
    holding = threading.Event()
    release = threading.Event()
    outcomes: list[str] = []

    def holder() -> None:
        with queue.slot():
            holding.set()
            release.wait(30)

    def waiter() -> None:
        try:
            with queue.slot():
                outcomes.append("served")
        except Overloaded as exc:
            outcomes.append(str(exc))

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(10)
    second = threading.Thread(target=waiter)
    second.start()
    wait_for(lambda: queue.waiting == 1, "the second request to wait")
    with pytest.raises(Overloaded, match="queue is full"), queue.slot():
        pass
    second.join(30)
    assert outcomes and "waited" in outcomes[0]
    release.set()
    first.join(30)
    with queue.slot():  # free again
        pass
    assert queue.waiting == 0


@pytest.mark.parametrize("limit, wait", [(0, 1.0), (1, 0.0)])
def test_queue_settings_are_validated(limit: int, wait: float) -> None:
    with pytest.raises(ValueError):
        SigningQueue(limit, wait)


# -- back-pressure through gRPC ----------------------------------------------------------


def test_full_signing_queue_answers_resource_exhausted(
    tmp_path: Path, softhsm_token: HsmConfig
) -> None:
    app = _start(tmp_path, softhsm_token, sign_queue_limit=2, sign_queue_wait=1.0, grpc_workers=8)
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = signer_pb2_grpc.SignerServiceStub(channel)
    pool = futures.ThreadPoolExecutor(max_workers=8)
    try:
        stub.IssueCertificate(_request(0), timeout=30)  # warm: keys and handles cached
        lock = app.token._conn.lock
        lock.acquire()  # the HSM is busy
        try:
            calls = [pool.submit(stub.IssueCertificate, _request(n), timeout=30) for n in range(7)]
            # While the HSM is still busy: 1 request holds the slot, 2 wait, 4 are refused.
            refused = wait_for(
                lambda: (
                    [c for c in calls if c.done()] if sum(c.done() for c in calls) >= 4 else None
                ),
                "refusals while the HSM is busy",
            )
            for call in refused[:4]:
                exc = call.exception()
                assert isinstance(exc, grpc.RpcError)
                assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            # The two waiting ones give up after sign_queue_wait, the HSM still busy.
            wait_for(lambda: sum(c.done() for c in calls) >= 6, "waiters to time out", 20)
        finally:
            lock.release()
        results = [c.exception(timeout=30) for c in calls]
        codes = sorted((e.code().name if isinstance(e, grpc.RpcError) else "OK") for e in results)
        assert codes == ["OK"] + ["RESOURCE_EXHAUSTED"] * 6
        messages = " ".join(str(e.details()) for e in results if isinstance(e, grpc.RpcError))
        assert "queue is full" in messages and "waited 1s" in messages
        text = _metrics(app)
        assert 'jpki_va_sign_queue_rejected_total{reason="full"} 4.0' in text
        assert 'jpki_va_sign_queue_rejected_total{reason="timeout"} 2.0' in text
        assert "jpki_va_sign_queue_depth 0.0" in text
        assert (
            'jpki_va_hsm_sign_seconds_count{key="jpki-va-card-auth-g1",mechanism="SHA256_RSA_PKCS"}'
            in text
        )
        with app.registry.read() as tx:
            assert len(list(tx.certificates())) == 2  # the warm-up and the one served
    finally:
        pool.shutdown(wait=True)
        channel.close()
        app.stop()


# -- faults ------------------------------------------------------------------------------


def _inject_faults(app: SignerApp, stop: threading.Event, done: list[str]) -> None:
    """Between operations: close the session, log out, or finalise the library."""
    conn = app.token._conn
    n = 0
    while not stop.wait(0.03):
        with conn.lock:
            session = conn.session
            if session is None:
                continue
            # The session may already be dead from the previous fault (no call since
            # to notice): then the fault is in place anyway.
            with contextlib.suppress(PKCS11Error):
                if n % 3 == 2:
                    conn.lib.finalize()  # C_Finalize: every session of the process is gone
                    done.append("finalize")
                else:
                    session.close()  # C_Logout + C_CloseSession
                    done.append("close")
        n += 1


@pytest.mark.slow
def test_signer_recovers_from_hsm_faults_without_half_done_writes(
    tmp_path: Path, softhsm_token: HsmConfig
) -> None:
    app = _start(tmp_path, softhsm_token, sign_queue_limit=15, sign_queue_wait=20.0)
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = signer_pb2_grpc.SignerServiceStub(channel)
    victims = [
        x509.load_der_x509_certificate(
            stub.IssueCertificate(
                _request(1000 + n, CertKind.CARD_SIGN), timeout=30
            ).certificate_der
        ).serial_number
        for n in range(12)
    ]
    stop = threading.Event()
    faults: list[str] = []
    injector = threading.Thread(target=_inject_faults, args=(app, stop, faults))
    issued: dict[int, bytes] = {}
    lost: set[int] = set()
    failures: list[grpc.RpcError] = []
    lock = threading.Lock()

    def issue(n: int) -> None:
        try:
            reply = stub.IssueCertificate(_request(n), timeout=60)
        except grpc.RpcError as exc:
            with lock:
                failures.append(exc)
            return
        with lock:
            issued[int.from_bytes(reply.serial, "big")] = reply.certificate_der

    def lose(serial: int) -> None:
        try:
            stub.RecordLoss(
                signer_pb2.RecordLossRequest(
                    kind=va_pb2.CERT_KIND_CARD_SIGN,
                    serial=serial.to_bytes(8, "big"),
                    cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
                ),
                timeout=60,
            )
        except grpc.RpcError as exc:
            with lock:
                failures.append(exc)
            return
        with lock:
            lost.add(serial)

    pool = futures.ThreadPoolExecutor(max_workers=8)
    try:
        injector.start()
        jobs = [pool.submit(issue, n) for n in range(60)]
        jobs += [pool.submit(lose, s) for s in victims]
        for job in jobs:
            job.result(timeout=120)  # every call came back to its caller
    finally:
        stop.set()
        injector.join(30)
        pool.shutdown(wait=True)
    try:
        assert faults.count("close") >= 2 and "finalize" in faults, faults
        assert app.token.reconnects >= 1
        # Errors the caller saw are the mapped ones, never a hang or INTERNAL.
        assert {f.code() for f in failures} <= {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        }, [f.details() for f in failures]
        assert issued, "no issuance survived the faults"
        assert lost == set(victims)  # RecordLoss needs no signature

        # The signer recovered on its own: a plain request works.
        stub.IssueCertificate(_request(999), timeout=30)

        # Registry == what callers were told: no record without its signature, no
        # signature the caller saw without its record.
        with app.registry.read() as tx:
            records: dict[int, CertificateRecord] = {
                r.serial: r for r in tx.certificates(CertKind.CARD_AUTH)
            }
            issuers = {r.key_id: r.certificate for r in tx.issuers()}
        for serial, der in issued.items():
            assert records[serial].certificate_der == der
        assert len(records) == len(issued) + 1
        for record in records.values():
            cert = x509.load_der_x509_certificate(record.certificate_der)
            cert.verify_directly_issued_by(issuers[record.issuer_key_id])

        # Every recorded loss is on the next snapshot's CRL, and the snapshot verifies.
        reply = stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=60)
        snapshot = SnapshotVerifier(
            [issuers[k] for k in issuers if _is_root(issuers[k])], SystemClock()
        ).verify(app.config.snapshot_dir / reply.name)
        on_crl = {
            entry.serial_number
            for vc in snapshot.crls
            if vc.info.kind is CertKind.CARD_SIGN
            for entry in vc.crl
        }
        assert set(victims) <= on_crl

        text = _metrics(app)
        assert "jpki_va_hsm_reconnects_total" in text
        assert (
            'jpki_va_hsm_errors_total{ckr="' in text or "jpki_va_hsm_errors_total{operation" in text
        )
    finally:
        channel.close()
        app.stop()


def _is_root(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject
