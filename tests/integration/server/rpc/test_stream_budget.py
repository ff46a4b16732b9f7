"""Open streams against a real responder worker: unary calls always find a thread.

A gRPC stream holds a server thread for as long as it is open, idle or not. These
tests open idle CheckStream and Health.Watch calls past the thread pool, past the
per-caller and per-worker bounds, and leave one idle past the idle time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jpki_va.core.domain import CertKind
from jpki_va.core.loopback import VERIFIER_HEADER
from jpki_va.protos import va_pb2, va_pb2_grpc
from tests.support import ALL_ROLES_VERIFIER, ExtraResponder, Issued, Pki, start_responder, wait_for

STREAM_DEADLINE = 60.0  # a bound on each test stream; none should come near it
# Channels in one process share connections unless told not to; each test call here
# has a connection of its own, so header-less callers are told apart (by their peer).
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def _request(issued: Issued) -> va_pb2.CheckRequest:
    return va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=int(issued.kind),  # type: ignore[arg-type]
                serial=issued.serial.to_bytes(8, "big"),
            )
        )
    )


class Stream:
    """A CheckStream on a connection of its own that the test feeds by hand."""

    def __init__(self, address: str, verifier: str | None = None) -> None:
        self._channel = grpc.insecure_channel(address, OWN_CONNECTION)
        self._batches: Queue[va_pb2.CheckBatchRequest | None] = Queue()
        metadata = () if verifier is None else ((VERIFIER_HEADER, verifier),)
        self.call: Any = va_pb2_grpc.StatusServiceStub(self._channel).CheckStream(
            self._requests(), timeout=STREAM_DEADLINE, metadata=metadata
        )
        self._replies: Iterator[va_pb2.CheckBatchResponse] = iter(self.call)

    def _requests(self) -> Iterator[va_pb2.CheckBatchRequest]:
        while (batch := self._batches.get()) is not None:
            yield batch

    def send(self, batch: va_pb2.CheckBatchRequest) -> None:
        self._batches.put(batch)

    def next(self) -> va_pb2.CheckBatchResponse:
        return next(self._replies)

    def ask(self, batch: va_pb2.CheckBatchRequest) -> va_pb2.CheckBatchResponse:
        self.send(batch)
        return self.next()

    def close(self) -> None:
        self._batches.put(None)
        self.call.cancel()
        self._channel.close()


class Watch:
    """A Health.Watch on a connection of its own."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address, OWN_CONNECTION)
        self.call: Any = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=STREAM_DEADLINE
        )
        self._replies: Iterator[health_pb2.HealthCheckResponse] = iter(self.call)

    def next(self) -> health_pb2.HealthCheckResponse:
        return next(self._replies)

    def close(self) -> None:
        self.call.cancel()
        self._channel.close()


def _refusal(stream: Stream) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stream.next()
    return info.value


@pytest.fixture(scope="module")
def issued(pki: Pki) -> Issued:
    certificate = pki.issue(CertKind.CARD_SIGN)
    pki.publish_and_wait()
    return certificate


def _responder(pki: Pki, state: Path, issued: Issued, **settings: Any) -> ExtraResponder:
    responder = start_responder(
        pki, state, insecure_loopback=True, loopback_verifier=ALL_ROLES_VERIFIER, **settings
    )

    def serving() -> bool:
        with grpc.insecure_channel(responder.address) as channel:
            stub = va_pb2_grpc.StatusServiceStub(channel)
            try:
                reply = stub.Check(_request(issued), timeout=5)
            except grpc.RpcError:
                return False
        return reply.status.status == va_pb2.CERT_STATUS_GOOD

    try:
        wait_for(serving, "the responder to serve")
    except BaseException:
        responder.close()
        raise
    return responder


def test_idle_streams_leave_threads_for_unary_calls(
    pki: Pki, issued: Issued, tmp_path: Path
) -> None:
    threads = 4
    responder = _responder(pki, tmp_path / "state", issued, grpc_threads=threads, max_watches=2)
    batch = va_pb2.CheckBatchRequest(requests=[_request(issued)])
    streams = [Stream(responder.address) for _ in range(2 * threads)]
    watches = [Watch(responder.address) for _ in range(2 * threads)]
    first: Queue[str] = Queue()

    def read_first(name: str, call: Stream | Watch) -> None:
        try:
            call.next()
        except grpc.RpcError as exc:
            first.put(f"{name} failed: {exc.code()} {exc.details()}")
            return
        first.put(name)

    readers = [
        threading.Thread(target=read_first, args=(f"stream {i}", s), daemon=True)
        for i, s in enumerate(streams)
    ] + [
        threading.Thread(target=read_first, args=(f"watch {i}", w), daemon=True)
        for i, w in enumerate(watches)
    ]
    try:
        for stream in streams:
            stream.send(batch)
        for reader in readers:
            reader.start()
        # Once a pool's worth of streams answered, their handlers are running (and
        # now wait, idle): a thread pool shared with unary calls would be all theirs.
        answered = [first.get(timeout=30) for _ in range(threads)]
        with grpc.insecure_channel(responder.address) as channel:
            stub = va_pb2_grpc.StatusServiceStub(channel)
            reply = stub.Check(_request(issued), timeout=5)
        assert reply.status.status == va_pb2.CERT_STATUS_GOOD
        # Every idle stream was served too, none left queued behind the others.
        deadline = time.monotonic() + 30
        while len(answered) < len(readers) and time.monotonic() < deadline:
            with contextlib.suppress(Empty):
                answered.append(first.get(timeout=1))
        assert sorted(answered) == sorted(
            [f"stream {i}" for i in range(len(streams))]
            + [f"watch {i}" for i in range(len(watches))]
        )
        # And the idle streams still answer when asked again.
        assert len(streams[0].ask(batch).results) == 1
    finally:
        for stream in streams:
            stream.close()
        for watch in watches:
            watch.close()
        responder.close()


def test_a_caller_past_its_stream_bound_is_refused(
    pki: Pki, issued: Issued, tmp_path: Path
) -> None:
    responder = _responder(
        pki, tmp_path / "state", issued, max_streams=6, max_streams_per_caller=2, max_watches=2
    )
    batch = va_pb2.CheckBatchRequest(requests=[_request(issued)])
    opened: list[Stream] = []
    try:
        for _ in range(2):  # on connections of their own: the verifier name is the caller
            opened.append(Stream(responder.address, ALL_ROLES_VERIFIER))
            assert len(opened[-1].ask(batch).results) == 1
        excess = Stream(responder.address, ALL_ROLES_VERIFIER)
        opened.append(excess)
        excess.send(batch)
        refusal = _refusal(excess)
        assert refusal.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ALL_ROLES_VERIFIER in (refusal.details() or "")
        assert "2 open streams" in (refusal.details() or "")
        # Another caller (no name on plaintext loopback: its connection) still gets one.
        other = Stream(responder.address)
        opened.append(other)
        assert len(other.ask(batch).results) == 1
        # Unary calls of the same caller are not streams: never refused for them.
        with grpc.insecure_channel(responder.address) as channel:
            stub = va_pb2_grpc.StatusServiceStub(channel)
            reply = stub.Check(
                _request(issued), timeout=5, metadata=((VERIFIER_HEADER, ALL_ROLES_VERIFIER),)
            )
        assert reply.status.status == va_pb2.CERT_STATUS_GOOD
        # A stream that ends gives its place back.
        opened[0].close()

        def admitted() -> bool:
            again = Stream(responder.address, ALL_ROLES_VERIFIER)
            opened.append(again)
            try:
                return len(again.ask(batch).results) == 1
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                again.close()
                return False

        wait_for(admitted, "the closed stream's place to be free", timeout=10)
    finally:
        for stream in opened:
            stream.close()
        responder.close()


def test_a_worker_past_its_stream_bound_refuses_and_unary_calls_go_on(
    pki: Pki, issued: Issued, tmp_path: Path
) -> None:
    responder = _responder(
        pki, tmp_path / "state", issued, max_streams=3, max_streams_per_caller=3, max_watches=2
    )
    batch = va_pb2.CheckBatchRequest(requests=[_request(issued)])
    opened: list[Stream | Watch] = []
    try:
        for _ in range(2):
            stream = Stream(responder.address)
            opened.append(stream)
            assert len(stream.ask(batch).results) == 1
        watch = Watch(responder.address)  # Health.Watch counts as a stream too
        opened.append(watch)
        assert watch.next().status == health_pb2.HealthCheckResponse.SERVING
        for late in (Stream(responder.address), Watch(responder.address)):
            opened.append(late)
            if isinstance(late, Stream):
                late.send(batch)
            with pytest.raises(grpc.RpcError) as info:
                late.next()
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "3 open streams" in (info.value.details() or "")
        with grpc.insecure_channel(responder.address) as channel:
            reply = va_pb2_grpc.StatusServiceStub(channel).Check(_request(issued), timeout=5)
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        assert reply.status.status == va_pb2.CERT_STATUS_GOOD
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for call in opened:
            call.close()
        responder.close()


def test_an_idle_stream_is_ended_after_the_idle_time(
    pki: Pki, issued: Issued, tmp_path: Path
) -> None:
    responder = _responder(pki, tmp_path / "state", issued, stream_idle=1)
    batch = va_pb2.CheckBatchRequest(requests=[_request(issued)])
    idle, busy = Stream(responder.address), Stream(responder.address)
    watch = Watch(responder.address)
    try:
        assert len(idle.ask(batch).results) == 1
        assert watch.next().status == health_pb2.HealthCheckResponse.SERVING
        # A stream that keeps asking is not idle, however long it stays open.
        started = time.monotonic()
        while time.monotonic() - started < 3:
            assert len(busy.ask(batch).results) == 1
            time.sleep(0.3)
        for call in (idle, watch):
            with pytest.raises(grpc.RpcError) as info:
                call.next()
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "idle" in (info.value.details() or "")
        assert time.monotonic() - started < 15  # ended by the idle time, not the deadline
        assert len(busy.ask(batch).results) == 1
    finally:
        for call in (idle, busy, watch):
            call.close()
        responder.close()
