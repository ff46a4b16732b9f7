"""A verifier-registry change reaches every worker and every open watch (issue 15 item 1).

A real signer and a responder with two workers, gRPC and HTTP. A change arrives in a
delta snapshot; the moment the responder has applied it, every worker answers by it,
whatever calls came before (none do here: nothing else makes the workers look up a
status, which used to be what refreshed their view of the registry). An open
`WatchRevocations` stream is authorised again as the registry changes: events the
verifier may no longer have are neither sent nor counted in the ledger (第41条).
"""

from __future__ import annotations

import http.client
import os
import threading
import urllib.parse
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from queue import Queue
from typing import TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from jpki_va.client import ClientError, PermissionDenied, RevocationEvent, VaClient
from jpki_va.core.clock import JST
from jpki_va.core.domain import CertKind, LossCause, Provision, Role
from jpki_va.protos import crl_pb2, crl_pb2_grpc, signer_pb2, va_pb2, va_pb2_grpc, verifiers_pb2
from jpki_va.server.app.responder_app import Responder
from jpki_va.server.ledger.provisions import read_ledgers
from jpki_va.server.rpc.server_common import SERVED_BY
from tests.support import (
    ExtraResponder,
    Issued,
    Pki,
    start_responder,
    throwaway_certificate,
    wait_for,
)

T = TypeVar("T")

WORKERS = 2
MAX_PROBES = 64  # fresh connections to reach every worker (SO_REUSEPORT spreads them)
PARTITION = "131016"  # where Pki.issue puts certificates

TRANSPORTS = ("grpc", "http")
LEAVING = {t: f"acl-leaving-{t}" for t in TRANSPORTS}  # removed while both workers know it
ARRIVING = {t: f"acl-arriving-{t}" for t in TRANSPORTS}  # added while the fleet runs
STREAMER = "acl-streamer"  # removed while its CheckStream is open
AUTH_WATCHER = "acl-auth-watcher"  # loses its only status role while watching
BOTH_WATCHER = "acl-both-watcher"  # loses one of two, then is removed


@dataclass
class Fleet:
    pki: Pki
    responder: ExtraResponder  # WORKERS workers, gRPC and HTTP
    card: Issued  # a CARD_AUTH certificate, for Check and OCSP
    crl_path: str  # the HTTP path of its CRL, as its CRL distribution point says

    @property
    def workers(self) -> set[int]:
        return set(self.responder.responder.worker_pids)


def _put_verifier(pki: Pki, name: str, roles: Collection[Role], replace: bool = False) -> None:
    pki.signer_stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=name,
            roles=[int(r) for r in roles],  # type: ignore[misc]
            client_certificate_der=[
                throwaway_certificate(name).public_bytes(serialization.Encoding.DER)
            ],
            replace=replace,
        ),
        timeout=30,
    )


def _lose(pki: Pki, issued: Issued) -> None:
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=int(issued.kind),  # type: ignore[arg-type]
            serial=issued.serial.to_bytes(8, "big"),
            cause=int(LossCause.HOLDER_REQUEST),  # type: ignore[arg-type]
        ),
        timeout=30,
    )


def _served_sequence(responder: Responder) -> int:
    """The snapshot the responder's live index reflects, as its own metrics say: read
    in this process, without a call to any worker."""
    for family in responder.collector.collect():
        if family.name == "jpki_va_index_sequence":
            return int(family.samples[0].value)
    return 0


def _publish_delta(fleet: Fleet) -> int:
    """Publish a delta and wait until the fleet's responder has applied it.

    The wait is a bound on correctness, not a speed claim; it asks the responder's
    supervisor only, so the workers get no call that could refresh them.
    """
    reply = fleet.pki.signer_stub.PublishSnapshot(
        signer_pb2.PublishSnapshotRequest(full=False), timeout=60
    )
    assert reply.type == "delta"  # applied in place, not a new index the workers switch to
    wait_for(
        lambda: _served_sequence(fleet.responder.responder) >= reply.sequence,
        f"the responder to apply delta {reply.sequence}",
        timeout=60,
    )
    return reply.sequence


@pytest.fixture(scope="module")
def fleet(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    for name in (*LEAVING.values(), STREAMER):
        _put_verifier(pki, name, {Role.SIGNING_VERIFIER, Role.AUTH_VERIFIER})
    _put_verifier(pki, AUTH_WATCHER, {Role.AUTH_VERIFIER})
    _put_verifier(pki, BOTH_WATCHER, {Role.SIGNING_VERIFIER, Role.AUTH_VERIFIER})
    card = pki.issue(CertKind.CARD_AUTH)
    pki.issue(CertKind.CARD_SIGN)  # its partition's CRL too: later changes fit in deltas
    pki.publish_and_wait()
    # Started after that snapshot: its workers open an index that already has them.
    responder = start_responder(
        pki, tmp_path_factory.mktemp("fleet"), workers=WORKERS, insecure_loopback=True,
        http_listen="127.0.0.1:0",
    )  # fmt: skip
    points = card.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    (uri,) = [
        name.value
        for point in points.value
        for name in (point.full_name or [])
        if isinstance(name, x509.UniformResourceIdentifier)
    ]
    try:
        yield Fleet(pki, responder, card, urllib.parse.urlsplit(uri).path)
    finally:
        responder.close()


# reaching every worker --------------------------------------------------------------------
def _every_worker(
    fleet: Fleet, probe: Callable[[], tuple[int, T]], what: str
) -> dict[int, list[T]]:
    """`probe` (one fresh connection: the worker that served it, and what it gave) until
    every worker has served one; bounded by MAX_PROBES."""
    found: dict[int, list[T]] = {}
    for _ in range(MAX_PROBES):
        worker, result = probe()
        found.setdefault(worker, []).append(result)
        if set(found) >= fleet.workers:
            return found
    raise AssertionError(f"{what}: only workers {sorted(found)} of {sorted(fleet.workers)}")


def _grpc_channel(fleet: Fleet) -> grpc.Channel:
    # A channel of its own (no shared subchannel): a new connection, maybe another worker.
    return grpc.insecure_channel(
        fleet.responder.address, options=[("grpc.use_local_subchannel_pool", 1)]
    )


def _served_by(call: grpc.Call) -> int:
    return int(dict(call.trailing_metadata() or ())[SERVED_BY])


def _check(issued: Issued) -> va_pb2.CheckRequest:
    return va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=int(issued.kind),  # type: ignore[arg-type]
                serial=issued.serial.to_bytes(8, "big"),
            )
        )
    )


def _grpc_probe(fleet: Fleet, verifier: str) -> tuple[int, list[object]]:
    """GetCrl (what `jpki-va crl` calls) and Check over one connection: their outcomes."""
    metadata = (("x-jpki-verifier", verifier),)
    outcomes: list[object] = []  # (code, details) of each call
    workers: set[int] = set()
    with _grpc_channel(fleet) as channel:
        crls = crl_pb2_grpc.CrlServiceStub(channel).GetCrl(
            crl_pb2.GetCrlRequest(kind=va_pb2.CERT_KIND_CARD_AUTH, partition=PARTITION),
            metadata=metadata,
            timeout=30,
        )
        try:
            chunks = list(crls)
            assert chunks and chunks[0].data.startswith(b"\x30")
            outcomes.append((grpc.StatusCode.OK, "a CRL"))
        except grpc.RpcError as error:
            outcomes.append((error.code(), error.details()))
        workers.add(_served_by(crls))
        check = va_pb2_grpc.StatusServiceStub(channel).Check
        try:
            reply, call = check.with_call(_check(fleet.card), metadata=metadata, timeout=30)
            assert reply.status.status == va_pb2.CERT_STATUS_GOOD
            outcomes.append((grpc.StatusCode.OK, "a status"))
        except grpc.RpcError as error:
            call = error  # type: ignore[assignment]
            outcomes.append((error.code(), error.details()))
        workers.add(_served_by(call))
    (worker,) = workers  # one connection, one worker
    return worker, outcomes


def _http_worker(connection: http.client.HTTPConnection, pids: Collection[int]) -> int:
    """The worker process holding the server end of `connection` (Linux /proc): the
    socket whose local end is the server's port and remote end this client's."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    local, remote = f"0100007F:{connection.port:04X}", f"0100007F:{client_port:04X}"
    inodes = [
        fields[9]
        for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines())
        if fields[1:3] == [local, remote]
    ]
    assert len(inodes) == 1, f"no server end of the connection from port {client_port}"
    target = f"socket:[{inodes[0]}]"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:  # closed meanwhile
                continue
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def _ocsp_request(issued: Issued) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        issued.certificate, issued.issuer, hashes.SHA1()
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def _http_probe(fleet: Fleet, verifier: str) -> tuple[int, list[object]]:
    """The CRL and an OCSP answer over one keep-alive connection: their outcomes."""
    port = fleet.responder.responder.http_port
    assert port is not None
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", fleet.crl_path, headers={"X-JPKI-Verifier": verifier})
        crl = connection.getresponse()
        body = crl.read()
        outcomes: list[object] = [
            f"CRL {crl.status}" + (": " + body.decode() if crl.status != 200 else "")
        ]
        connection.request(
            "POST",
            "/ocsp",
            body=_ocsp_request(fleet.card),
            headers={"X-JPKI-Verifier": verifier, "Content-Type": "application/ocsp-request"},
        )
        answer = connection.getresponse()
        assert answer.status == 200
        status = ocsp.load_der_ocsp_response(answer.read()).response_status
        outcomes.append(f"OCSP {status.name}")
        return _http_worker(connection, fleet.workers), outcomes
    finally:
        connection.close()


def _outcomes(found: dict[int, list[list[object]]]) -> set[object]:
    return {outcome for results in found.values() for result in results for outcome in result}


# tests -------------------------------------------------------------------------------------
SERVED = {
    "grpc": {(grpc.StatusCode.OK, "a CRL"), (grpc.StatusCode.OK, "a status")},
    "http": {"CRL 200", "OCSP SUCCESSFUL"},
}


def _probe(fleet: Fleet, transport: str, verifier: str) -> set[object]:
    """What every worker gave `verifier` over `transport` (the first call of each is what
    shows a stale registry: a status lookup used to refresh the worker's view)."""
    if transport == "grpc":
        return _outcomes(_every_worker(fleet, lambda: _grpc_probe(fleet, verifier), "gRPC"))
    return _outcomes(_every_worker(fleet, lambda: _http_probe(fleet, verifier), "HTTP"))


def _refused(transport: str, verifier: str) -> set[object]:
    unknown = f"verifier id {verifier!r} is not a registered verifier"
    if transport == "grpc":
        return {(grpc.StatusCode.PERMISSION_DENIED, unknown)}
    return {f"CRL 403: {unknown}\n", "OCSP UNAUTHORIZED"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_removed_verifier_is_refused_by_every_worker_once_the_delta_is_applied(
    fleet: Fleet, transport: str
) -> None:
    verifier = LEAVING[transport]
    assert _probe(fleet, transport, verifier) == SERVED[transport]  # by both workers
    fleet.pki.signer_stub.RemoveVerifier(
        verifiers_pb2.RemoveVerifierRequest(id=verifier), timeout=30
    )
    _publish_delta(fleet)
    # No call in between: every worker refuses at once (it used to be mixed 200/403).
    assert _probe(fleet, transport, verifier) == _refused(transport, verifier)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_added_verifier_is_served_by_every_worker_once_the_delta_is_applied(
    fleet: Fleet, transport: str
) -> None:
    verifier = ARRIVING[transport]
    assert _probe(fleet, transport, verifier) == _refused(transport, verifier)
    _put_verifier(fleet.pki, verifier, {Role.AUTH_VERIFIER})
    _publish_delta(fleet)
    assert _probe(fleet, transport, verifier) == SERVED[transport]


def test_an_open_check_stream_is_refused_once_its_verifier_is_removed(fleet: Fleet) -> None:
    batches: Queue[va_pb2.CheckBatchRequest | None] = Queue()

    def requests() -> Iterator[va_pb2.CheckBatchRequest]:
        while (batch := batches.get(timeout=60)) is not None:
            yield batch

    batch = va_pb2.CheckBatchRequest(requests=[_check(fleet.card)])
    with _grpc_channel(fleet) as channel:
        call = va_pb2_grpc.StatusServiceStub(channel).CheckStream(
            requests(), metadata=(("x-jpki-verifier", STREAMER),), timeout=60
        )
        replies = iter(call)
        try:
            batches.put(batch)
            assert [r.status.status for r in next(replies).results] == [va_pb2.CERT_STATUS_GOOD]
            fleet.pki.signer_stub.RemoveVerifier(
                verifiers_pb2.RemoveVerifierRequest(id=STREAMER), timeout=30
            )
            _publish_delta(fleet)
            # The same stream, the next batch: answered to the registry as it is now.
            batches.put(batch)
            with pytest.raises(grpc.RpcError) as refused:
                next(replies)
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert refused.value.details() == (
                f"verifier id {STREAMER!r} is not a registered verifier"
            )
        finally:
            batches.put(None)
            call.cancel()  # type: ignore[no-untyped-call]  # untyped in the grpc stubs


# open watches -----------------------------------------------------------------------------
@dataclass
class Watch:
    """A WatchRevocations stream read on its own thread."""

    events: list[RevocationEvent] = field(default_factory=list)
    error: ClientError | None = None
    started: threading.Event = field(default_factory=threading.Event)  # first batch read
    ended: threading.Event = field(default_factory=threading.Event)
    stop_at: set[int] = field(default_factory=set)  # serials that end the reading

    def received(self, issued: Issued) -> bool:
        return any((e.kind, e.serial) == (issued.kind, issued.serial) for e in self.events)


@pytest.fixture
def watch(fleet: Fleet) -> Iterator[Callable[[str], Watch]]:
    clients: list[VaClient] = []
    readers: list[threading.Thread] = []

    def start(verifier: str) -> Watch:
        client = VaClient(fleet.responder.address, insecure=True, verifier=verifier)
        clients.append(client)
        watch = Watch()
        updates = client.watch(since=0, timeout=120)

        def read() -> None:
            try:
                for update in updates:
                    watch.events.extend(update.events)
                    watch.started.set()
                    if any(e.serial in watch.stop_at for e in update.events):
                        return
            except ClientError as exc:
                watch.error = exc
            finally:
                updates.close()
                watch.ended.set()

        reader = threading.Thread(target=read, daemon=True)
        readers.append(reader)
        reader.start()
        return watch

    yield start
    for client in clients:
        client.close()
    for reader in readers:
        reader.join(30)


def _count(fleet: Fleet, verifier: str, provision: Provision) -> int:
    """Provisions the fleet's ledger holds for `verifier` (what the 第41条 report counts)."""
    ledger = read_ledgers(fleet.responder.responder.config.ledger_dir)
    try:
        today = datetime.now(JST).date()
        return sum(
            c.count
            for c in ledger.counts(today - timedelta(days=1), today + timedelta(days=1))
            if c.verifier_id == verifier and c.provision is provision
        )
    finally:
        ledger.close()


def test_a_watch_ends_when_its_verifier_loses_its_role_and_counts_nothing_more(
    fleet: Fleet, watch: Callable[[str], Watch]
) -> None:
    pki = fleet.pki
    first, second = pki.issue(CertKind.CARD_AUTH), pki.issue(CertKind.CARD_AUTH)
    stream = watch(AUTH_WATCHER)
    stream.stop_at.add(second.serial)  # stop reading if it is ever sent
    assert stream.started.wait(30), "the watch sent no first batch"
    _lose(pki, first)
    _publish_delta(fleet)
    wait_for(lambda: stream.received(first), "the watch to send the first loss")
    counted = _count(fleet, AUTH_WATCHER, Provision.AUTH_STATUS)  # before it leaves
    assert counted >= 1
    # One delta takes AUTH_VERIFIER away (its only status role) and brings a CARD_AUTH loss.
    _put_verifier(pki, AUTH_WATCHER, {Role.SIGNING_VERIFIER}, replace=True)
    _lose(pki, second)
    _publish_delta(fleet)
    assert stream.ended.wait(30), "the watch went on after its verifier lost AUTH_VERIFIER"
    assert not stream.received(second), "a CARD_AUTH loss was sent after the role was removed"
    assert isinstance(stream.error, PermissionDenied), stream.error
    assert "missing role AUTH_VERIFIER" in stream.error.details
    assert _count(fleet, AUTH_WATCHER, Provision.AUTH_STATUS) == counted


def test_a_watch_narrows_to_what_its_verifier_may_still_have_and_ends_when_removed(
    fleet: Fleet, watch: Callable[[str], Watch]
) -> None:
    pki = fleet.pki
    auth, sign = pki.issue(CertKind.CARD_AUTH), pki.issue(CertKind.CARD_SIGN)
    stream = watch(BOTH_WATCHER)  # every kind: it holds both status roles
    stream.stop_at.add(auth.serial)
    assert stream.started.wait(30), "the watch sent no first batch"
    auth_counted = _count(fleet, BOTH_WATCHER, Provision.AUTH_STATUS)
    sign_counted = _count(fleet, BOTH_WATCHER, Provision.SIGNING_STATUS)
    # AUTH_VERIFIER taken away in the delta that brings one loss of each kind.
    _put_verifier(pki, BOTH_WATCHER, {Role.SIGNING_VERIFIER}, replace=True)
    _lose(pki, auth)
    _lose(pki, sign)
    _publish_delta(fleet)
    wait_for(lambda: stream.received(sign) or stream.ended.is_set(), "the watch to send the loss")
    assert not stream.received(auth), "a CARD_AUTH loss was sent after the role was removed"
    assert stream.received(sign) and stream.error is None
    assert _count(fleet, BOTH_WATCHER, Provision.AUTH_STATUS) == auth_counted
    assert _count(fleet, BOTH_WATCHER, Provision.SIGNING_STATUS) == sign_counted + 1
    # Removed from the registry: the watch ends, whatever it still had.
    pki.signer_stub.RemoveVerifier(verifiers_pb2.RemoveVerifierRequest(id=BOTH_WATCHER), timeout=30)
    _publish_delta(fleet)
    assert stream.ended.wait(30), "the watch went on after its verifier was removed"
    assert isinstance(stream.error, PermissionDenied), stream.error
    assert f"verifier id {BOTH_WATCHER!r} is not a registered verifier" in stream.error.details
