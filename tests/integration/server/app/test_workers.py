"""`responder --workers N`: every worker answers and follows new full and delta snapshots
without a restart; graceful stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Queue

import grpc

from jpki_va.core.domain import CertKind, LossCause
from jpki_va.protos import signer_pb2, va_pb2, va_pb2_grpc
from jpki_va.server.rpc.server_common import SERVED_BY
from tests.support import ALL_ROLES_VERIFIER, Issued, Pki, start_responder, wait_for


def _request(issued: Issued) -> va_pb2.CheckRequest:
    return va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=int(issued.kind),  # type: ignore[arg-type]
                serial=issued.serial.to_bytes(8, "big"),
            )
        )
    )


def _ask(address: str, request: va_pb2.CheckRequest) -> tuple[str, va_pb2.CheckResponse]:
    """One call on a fresh connection (SO_REUSEPORT spreads connections over workers)."""
    with grpc.insecure_channel(address) as channel:
        reply, call = va_pb2_grpc.StatusServiceStub(channel).Check.with_call(request, timeout=10)
    worker = dict(call.trailing_metadata() or ())[SERVED_BY]
    return str(worker), reply


def test_two_workers_answer_and_both_see_a_new_snapshot(pki: Pki, tmp_path: Path) -> None:
    first = pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    extra = start_responder(
        pki, tmp_path / "state", workers=2, insecure_loopback=True,
        loopback_verifier=ALL_ROLES_VERIFIER,
    )  # fmt: skip
    try:
        workers: dict[str, va_pb2.CheckResponse] = {}

        def both_answered() -> bool:
            worker, reply = _ask(extra.address, _request(first))
            workers[worker] = reply
            return len(workers) == 2

        wait_for(both_answered, "both workers to answer", timeout=60)
        assert all(r.status.status == va_pb2.CERT_STATUS_GOOD for r in workers.values())
        # A new full snapshot: every worker serves it without a restart.
        second = pki.issue(CertKind.CARD_AUTH)
        sequence = pki.publish_and_wait()
        fresh: set[str] = set()

        def both_fresh() -> bool:
            worker, reply = _ask(extra.address, _request(second))
            if reply.status.index_sequence >= sequence:
                assert reply.status.status == va_pb2.CERT_STATUS_GOOD
                fresh.add(worker)
            return fresh == set(workers)

        wait_for(both_fresh, "both workers to serve the new snapshot", timeout=60)
        # A delta is applied to the live index in place: both workers see it too.
        pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=int(second.kind),  # type: ignore[arg-type]
                serial=second.serial.to_bytes(8, "big"),
                cause=int(LossCause.HOLDER_REQUEST),  # type: ignore[arg-type]
            ),
            timeout=30,
        )
        delta = pki.publish_and_wait(full=False)
        revoked: set[str] = set()

        def both_revoked() -> bool:
            worker, reply = _ask(extra.address, _request(second))
            if reply.status.index_sequence >= delta:
                assert reply.status.status == va_pb2.CERT_STATUS_REVOKED
                revoked.add(worker)
            return revoked == set(workers)

        wait_for(both_revoked, "both workers to serve the delta", timeout=60)
    finally:
        extra.close()


def test_in_flight_stream_finishes_on_shutdown(pki: Pki, tmp_path: Path) -> None:
    issued = pki.issue(CertKind.CARD_SIGN)
    pki.publish_and_wait()
    extra = start_responder(
        pki, tmp_path / "state", insecure_loopback=True, loopback_verifier=ALL_ROLES_VERIFIER,
        grace_seconds=20.0,
    )  # fmt: skip
    batches: Queue[va_pb2.CheckBatchRequest | None] = Queue()

    def requests() -> Iterator[va_pb2.CheckBatchRequest]:
        while (batch := batches.get()) is not None:
            yield batch

    batch = va_pb2.CheckBatchRequest(requests=[_request(issued)] * 3)
    channel = grpc.insecure_channel(extra.address)
    closer = threading.Thread(target=extra.close)
    try:
        wait_for(lambda: _ask(extra.address, _request(issued)), "the responder to serve")
        call = va_pb2_grpc.StatusServiceStub(channel).CheckStream(requests(), timeout=60)
        replies = iter(call)
        batches.put(batch)
        first = next(replies)
        assert len(first.results) == 3
        # Shut down while the stream is open: health goes NOT_SERVING, the server
        # refuses new calls, and this call still gets its answers within the grace.
        closer.start()

        def refusing_new_calls() -> bool:
            try:
                _ask(extra.address, _request(issued))
            except grpc.RpcError:
                return True
            return False

        wait_for(refusing_new_calls, "the server to stop taking new calls")
        batches.put(batch)
        second = next(replies)
        assert [r.status.status for r in second.results] == [va_pb2.CERT_STATUS_GOOD] * 3
        batches.put(None)
        assert list(replies) == []
        assert call.code() is grpc.StatusCode.OK
    finally:
        batches.put(None)
        channel.close()
        if closer.ident is None:
            extra.close()
        else:
            closer.join(60)
