"""A responder worker's descriptors: its limit raised at start, its connections capped
below it, idle HTTP connections shed rather than starving new clients."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import ALL_ROLES_VERIFIER, ExtraResponder, Pki, start_responder, wait_for


@contextlib.contextmanager
def soft_descriptor_limit(limit: int) -> Iterator[int]:
    """This process's soft RLIMIT_NOFILE lowered meanwhile (processes it starts inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit < hard, "the test needs a hard limit above the lowered soft one"
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _soft_limit_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open files limit for {pid}")


@pytest.fixture(scope="module")
def published(pki: Pki) -> Pki:
    pki.publish_and_wait()
    return pki


def _http_responder(pki: Pki, state: Path, **settings: object) -> ExtraResponder:
    return start_responder(
        pki,
        state,
        insecure_loopback=True,
        loopback_verifier=ALL_ROLES_VERIFIER,
        http_listen="127.0.0.1:0",
        **settings,
    )


def _crl_list_status(responder: ExtraResponder, timeout: float) -> int:
    """The status of an HTTP request every worker answers (a CRL that does not exist)."""
    url = f"http://127.0.0.1:{responder.responder.http_port}/crl/none.crl"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _serving(responder: ExtraResponder) -> bool:
    with grpc.insecure_channel(responder.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _open_idle(port: int, count: int) -> list[socket.socket]:
    opened = []
    try:
        for _ in range(count):
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except BaseException:
        for s in opened:
            s.close()
        raise
    return opened


def test_idle_connections_past_the_descriptor_limit_do_not_starve_a_worker(
    published: Pki, tmp_path: Path
) -> None:
    # Workers start with a small soft limit, as under a default `ulimit -n`.
    with soft_descriptor_limit(256) as hard:
        responder = _http_responder(published, tmp_path / "state")
    opened: list[socket.socket] = []
    try:
        wait_for(lambda: _serving(responder), "the responder to serve")
        (worker,) = responder.responder.worker_pids
        # More idle connections than the small limit would have allowed.
        opened = _open_idle(responder.responder.http_port or 0, 300)
        assert _crl_list_status(responder, timeout=5) == 404
        assert _serving(responder)
        assert responder.responder.worker_pids == [worker]
        assert _soft_limit_of(worker) == hard  # raised at start as far as allowed
    finally:
        for s in opened:
            s.close()
        responder.close()


def test_past_the_connection_cap_the_oldest_idle_connections_are_shed(
    published: Pki, tmp_path: Path
) -> None:
    responder = _http_responder(published, tmp_path / "state", http_max_connections=8)
    opened: list[socket.socket] = []
    try:
        wait_for(lambda: _serving(responder), "the responder to serve")
        port = responder.responder.http_port or 0
        for _ in range(12):
            opened.extend(_open_idle(port, 1))
            time.sleep(0.05)  # accepted in this order
        assert _crl_list_status(responder, timeout=5) == 404

        def closed(s: socket.socket) -> bool:
            s.settimeout(0.2)
            try:
                return s.recv(1) == b""
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True

        # The first five made room for the next five and the request; the rest stay.
        wait_for(lambda: all(closed(s) for s in opened[:5]), "the oldest to be shed")
        assert not any(closed(s) for s in opened[5:])
        assert _serving(responder)
    finally:
        for s in opened:
            s.close()
        responder.close()


def test_past_the_grpc_connection_cap_new_connections_are_closed(
    published: Pki, tmp_path: Path
) -> None:
    responder = _http_responder(published, tmp_path / "state", grpc_max_connections=3)
    opened: list[socket.socket] = []
    try:
        wait_for(lambda: _serving(responder), "the responder to serve")
        # Three connections that never speak HTTP/2 fill the cap (grpc counts them
        # until its handshake timeout); the next one is closed as soon as it opens.
        port = responder.responder.port

        def taken_in() -> socket.socket | None:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if s.recv(4):  # grpc's SETTINGS: accepted, and counted
                return s
            s.close()  # the health check's connection was still counted; again
            return None

        opened = [wait_for(taken_in, "a connection to be taken in", timeout=10) for _ in range(3)]
        late = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened.append(late)
        assert late.recv(4) == b""
        for s in opened[:3]:
            s.close()

        def serving_again() -> bool:
            try:
                return _serving(responder)
            except grpc.RpcError:
                return False

        wait_for(serving_again, "the worker to take connections again", timeout=10)
    finally:
        for s in opened:
            s.close()
        responder.close()
