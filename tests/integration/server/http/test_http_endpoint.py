"""The HTTP server itself on 127.0.0.1: connections, pipelining, failures, idle clients.

OCSP behind it is a tiny fake of the one-method interface (the real responder is
exercised over HTTP in test_http); here the point is what the connection layer does.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from jpki_va.core.domain import CertKind
from jpki_va.server.http import server as http_server
from jpki_va.server.http.app import Forbidden, HttpApp, PublishedFile
from jpki_va.server.http.server import HttpServer
from jpki_va.server.responder.ocsp_cache import OcspReply
from tests.support import wait_for

ANSWER = b"\x30\x03\x0a\x01\x01"


class FakeAccess:
    def __init__(self) -> None:
        self.callers: list[str | None] = []
        self.commits = 0
        self.recording = True

    def begin_turn(self) -> None:
        pass

    def commit(self) -> bool:
        self.commits += 1
        return self.recording

    def announcement(self) -> bytes | None:
        return None

    def respond(self, claimed: str | None, der: bytes) -> OcspReply:
        self.callers.append(claimed)
        if der == b"boom":
            raise RuntimeError("secret detail from /srv/internal/path")
        return OcspReply(ANSWER)

    def crl(
        self, claimed: str | None, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> PublishedFile | None:
        if claimed is None:
            raise Forbidden(401, "no verifier identity")
        return None

    delta_crl = crl

    def ca_certificate(self, kind: CertKind | None, key_id_prefix: bytes) -> PublishedFile | None:
        return None

    def arl(self, key_id_prefix: bytes) -> PublishedFile | None:
        return None


@pytest.fixture
def access() -> FakeAccess:
    return FakeAccess()


@pytest.fixture
def server(access: FakeAccess) -> Iterator[HttpServer]:
    app = HttpApp(access, max_request_bytes=1024)
    running = HttpServer(app, "127.0.0.1", 0, idle_seconds=0.5)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def post(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_failing_request_gets_500_and_the_server_goes_on(server: HttpServer) -> None:
    reply = exchange(server.port, post(b"boom"))
    assert reply.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"Connection: close" in reply
    assert b"secret" not in reply and b"Traceback" not in reply
    assert exchange(server.port, post(b"fine")).endswith(ANSWER)


def test_pipelined_requests_are_answered_in_order(server: HttpServer) -> None:
    reply = exchange(server.port, post(b"one") + b"GET /crl/x HTTP/1.1\r\nHost: x\r\n\r\n")
    first = reply.index(b"HTTP/1.1 200 OK")
    second = reply.index(b"HTTP/1.1 404 Not Found")
    assert first < second


def test_expect_continue(server: HttpServer) -> None:
    reply = exchange(server.port, post(b"one", b"Expect: 100-continue\r\n"))
    assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")


def test_oversized_length_is_refused_before_the_body(server: HttpServer) -> None:
    head = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"
    reply = exchange(server.port, head)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_too_many_header_bytes(server: HttpServer) -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(20))
    reply = exchange(server.port, b"GET /crl/x HTTP/1.1\r\n" + headers + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_http_1_0_without_keep_alive_is_closed(server: HttpServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /favicon.ico HTTP/1.0\r\n\r\n")
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert s.recv(65536) == b""  # closed by the server


def test_idle_connections_are_closed(server: HttpServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /ocsp/MA HTTP/1.1\r\n")  # and never finishes the request
        started = time.monotonic()
        s.settimeout(5)
        assert s.recv(65536) == b""
        assert time.monotonic() - started < 5
    wait_for(lambda: exchange(server.port, post(b"x")).endswith(ANSWER), "server to answer")


def test_the_verifier_header_reaches_the_gate(server: HttpServer, access: FakeAccess) -> None:
    exchange(server.port, post(b"x", b"X-JPKI-Verifier: bank-a\r\n"))
    exchange(server.port, post(b"x"))
    assert access.callers == ["bank-a", None]
    crl = b"GET /crl/card-sign/0011223344556677/131016.crl HTTP/1.1\r\nHost: x\r\n\r\n"
    assert exchange(server.port, crl).startswith(b"HTTP/1.1 401 ")


def test_nothing_leaves_when_the_provision_cannot_be_recorded(
    server: HttpServer, access: FakeAccess
) -> None:
    access.recording = False
    reply = exchange(server.port, post(b"x"))
    assert reply.startswith(b"HTTP/1.1 503 ")
    assert ANSWER not in reply
    access.recording = True
    assert exchange(server.port, post(b"x")).endswith(ANSWER)


def test_pipelined_answers_share_one_commit(server: HttpServer, access: FakeAccess) -> None:
    before = access.commits
    reply = exchange(server.port, post(b"a") + post(b"b") + post(b"c"))
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert access.commits - before < 3


def test_pipelined_answers_leave_in_one_write(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[int] = []
    flush = http_server._Connection.flush

    def counted(connection: http_server._Connection) -> None:
        flushed.append(len(connection._out))
        flush(connection)

    monkeypatch.setattr(http_server._Connection, "flush", counted)
    reply = exchange(server.port, post(b"a") + post(b"b") + post(b"c"))
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert flushed[0] == 3  # one segment in, one write out


def _send_until_closed(port: int, head: bytes, filler: bytes, limit: int) -> bytes:
    """Send head, then filler until the server answers or `limit` bytes went out."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        sent = 0
        s.setblocking(False)
        reply = b""
        try:
            while sent < limit and not reply:
                try:
                    sent += s.send(filler)
                except BlockingIOError:
                    time.sleep(0.01)
                with contextlib.suppress(BlockingIOError):
                    reply = s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.setblocking(True)
        s.settimeout(5)
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert sent < limit, "the server buffered the whole unterminated field"
    return reply


@pytest.mark.parametrize(
    "head",
    [
        b"GET /crl/x HTTP/1.1\r\nHost: x\r\nX-Endless: ",  # a value that never ends
        b"GET /crl/x HTTP/1.1\r\nHost: x\r\nX-Endless",  # a name that never ends
    ],
    ids=["header-value", "header-name"],
)
def test_a_header_that_never_ends_is_refused_as_it_arrives(server: HttpServer, head: bytes) -> None:
    reply = _send_until_closed(server.port, head, b"v" * 65536, 64 * 1024 * 1024)
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert exchange(server.port, post(b"x")).endswith(ANSWER)


@pytest.mark.parametrize("version", [b"HTTP/0.9", b"HTTP/2.0"])
def test_other_http_versions_are_not_answered_as_1_1(server: HttpServer, version: bytes) -> None:
    reply = exchange(server.port, b"GET /crl/x " + version + b"\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert b"Connection: close" in reply


def test_http_1_0_keep_alive_is_either_announced_or_closed(server: HttpServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /crl/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 404 ")
        if b"Connection: keep-alive" not in reply:
            assert s.recv(65536) == b""  # not kept without saying so


def test_a_request_trickled_a_byte_at_a_time_is_cut_at_its_deadline(access: FakeAccess) -> None:
    running = HttpServer(
        HttpApp(access, max_request_bytes=1024), "127.0.0.1", 0, idle_seconds=30, request_seconds=1
    )
    running.start()
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as s:
            started = time.monotonic()
            closed = False
            for byte in b"GET /crl/x HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"v" * 100:
                try:
                    s.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                time.sleep(0.1)
            if not closed:
                s.settimeout(5)
                assert s.recv(65536) == b""
            # Every byte came within the idle time; the request deadline ended it.
            assert time.monotonic() - started < 5
    finally:
        running.stop()


def test_the_deadlines_must_be_positive(access: FakeAccess) -> None:
    app = HttpApp(access, max_request_bytes=1024)
    with pytest.raises(ValueError, match="positive"):
        HttpServer(app, "127.0.0.1", 0, request_seconds=0)


def _idle_connections(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send nothing; each is accepted before the next opens."""
    opened = []
    for _ in range(count):
        opened.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.05)  # the server's loop sees them in this order
    return opened


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.2)
    try:
        return s.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_at_the_cap_the_oldest_idle_connection_is_shed(access: FakeAccess) -> None:
    running = HttpServer(HttpApp(access, max_request_bytes=1024), "127.0.0.1", 0, max_connections=4)
    running.start()
    opened = _idle_connections(running.port, 6)
    try:
        # Six idle connections, a cap of four: the two that waited longest went first.
        wait_for(lambda: _closed_by_server(opened[1]), "the second connection to be shed")
        assert _closed_by_server(opened[0])
        assert not any(_closed_by_server(s) for s in opened[2:])
        # A new client is answered: the then oldest idle connection makes room.
        assert exchange(running.port, post(b"x")).endswith(ANSWER)
        assert _closed_by_server(opened[2])
        # A connection in use is not idle: its request is answered.
        opened[5].sendall(post(b"y"))
        opened[5].settimeout(5)
        assert opened[5].recv(65536).endswith(ANSWER)
    finally:
        for s in opened:
            s.close()
        running.stop()


def test_at_the_cap_with_no_idle_connection_a_new_one_is_refused(access: FakeAccess) -> None:
    running = HttpServer(HttpApp(access, max_request_bytes=1024), "127.0.0.1", 0, max_connections=3)
    running.start()
    opened = _idle_connections(running.port, 3)
    try:
        for s in opened:  # each inside a request that has not ended yet
            s.sendall(b"GET /crl/x HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)
        reply = exchange(running.port, post(b"x"))
        assert reply.startswith(b"HTTP/1.1 503 ")
        assert b"Connection: close" in reply
        assert not any(_closed_by_server(s) for s in opened)
        opened[0].sendall(b"\r\n")  # the requests in progress are still answered
        opened[0].settimeout(5)
        assert opened[0].recv(65536).startswith(b"HTTP/1.1 404 ")
    finally:
        for s in opened:
            s.close()
        running.stop()


def test_the_connection_cap_must_be_positive(access: FakeAccess) -> None:
    app = HttpApp(access, max_request_bytes=1024)
    with pytest.raises(ValueError, match="max_connections"):
        HttpServer(app, "127.0.0.1", 0, max_connections=0)
