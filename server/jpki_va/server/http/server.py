"""HTTP OCSP and CRLs beside gRPC, for the validators the world already has.

RFC 6960 Appendix A and RFC 5019: GET {url}/{url-encoded base64 of the request}
and POST application/ocsp-request, answered with RFC 5019 cache headers and 304
on a matching If-None-Match; the current CRLs at the URLs issued certificates
carry in their CRL distribution points.

`HttpApp` decides what to answer and does no I/O; `_Connection` is an asyncio
protocol over the httptools parser that only moves bytes; `HttpServer` runs them
on an event loop thread of a worker process, on a port every worker shares
(SO_REUSEPORT). The hot path (parse, cache lookup, write cached bytes) creates no
routing objects and logs nothing.

Beyond loopback the server speaks TLS (`server_tls`) and demands a client certificate
issued by the responder's client CA: the certificate, not a header, names the
verifier, by the same fingerprint gRPC's mTLS uses (`access.gate.fingerprint_of`).
The X-JPKI-Verifier header a client sends over TLS is dropped. Behind a balancer whose
client certificate the responder trusts (`proxies`), the verifier is the certificate the
balancer verified, named by its `x-forwarded-client-cert` header (access/proxy.py); the
header counts on no other connection.

Each answered request's latency, from its last byte to its response written (signing
and the provision commit included), goes to an optional `HttpTiming`.

Slow and idle clients: a request must arrive within a deadline, an idle connection is
closed after a while, and a worker keeps at most `max_connections` open (below its
descriptor limit, which the responder derives it from): at the cap the connection
idle longest makes room for a new one, and when none is idle the new one gets 503.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, cast

import httptools
import uvloop

from jpki_va.core.loopback import VERIFIER_HEADER
from jpki_va.server.access.gate import fingerprint_of
from jpki_va.server.access.proxy import FORWARDED_HEADER, TrustedProxies, forwarded_fingerprint
from jpki_va.server.http.access import TLS_PEER_PREFIX
from jpki_va.server.http.app import HttpApp

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16_384
IDLE_SECONDS = 30.0
# A request's head and body must arrive within this, however slowly they trickle:
# a byte now and then keeps a connection from looking idle, not from this deadline.
REQUEST_SECONDS = 10.0
MAX_CONNECTIONS = 1024  # for direct use; a responder worker sets its own
# A refused connection reads (and drops) what its client sends for this long before it
# closes: closing on unread bytes would reset it, and the client might lose the 503.
LINGER_SECONDS = 1.0

_VERSIONS = frozenset(("1.0", "1.1"))

_VERIFIER_HEADER = VERIFIER_HEADER.encode()  # header names arrive lower-cased bytes
_FORWARDED_HEADER = FORWARDED_HEADER.encode()


class HttpTiming(Protocol):
    def answered(self) -> str:
        """The route of the request the app answered last (its observer was told)."""
        ...

    def took(self, route: str, seconds: float) -> None: ...


def server_tls(cert_chain: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """TLS that demands a client certificate issued by `client_ca`, as gRPC's does."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    context.load_cert_chain(str(cert_chain), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Outbox:
    """Responses held until what they provide is recorded: one commit per loop turn.

    Every answer that gives status or a CRL is counted before it leaves (第41条), and
    one ledger write per request would cost more than the request; so the responses
    of one turn of the event loop leave together, right after one commit. In order:
    a connection's responses leave in the order its requests came.
    """

    def __init__(
        self, app: HttpApp, loop: asyncio.AbstractEventLoop, timing: HttpTiming | None
    ) -> None:
        self._app = app
        self._loop = loop
        self._timing = timing
        # (connection, response, close, (route, when its request ended) or None)
        self._held: list[tuple[_Connection, bytes, bool, tuple[str, float] | None]] = []
        self._open = False  # a turn's answers are being gathered; `_release` ends it

    def begin(self) -> None:
        """A request is about to be answered: open this turn if it is not yet open."""
        if not self._open:
            self._open = True
            self._loop.call_soon(self._release)
            self._app.begin_turn()

    def hold(
        self,
        connection: _Connection,
        data: bytes,
        close: bool,
        timed: tuple[str, float] | None = None,
    ) -> None:
        self.begin()
        connection.pending += 1
        self._held.append((connection, data, close, timed))

    def answered(self, connection: _Connection, data: bytes, close: bool, started: float) -> None:
        """Hold an answer the app gave, timed from when its request ended."""
        timed = None if self._timing is None else (self._timing.answered(), started)
        self.hold(connection, data, close, timed)

    def _release(self) -> None:
        self._open = False
        held, self._held = self._held, []
        try:
            recorded = self._app.commit()
        except Exception:
            log.exception("cannot record provisions")
            recorded = False
        unavailable = b""
        if not recorded:
            unavailable = self._app.error(
                503, "cannot record the provision; try again", extra=b"Connection: close\r\n"
            )
        now = self._loop.time()
        written: list[_Connection] = []
        for connection, data, close, timed in held:
            leaves = recorded or data.startswith(b"HTTP/1.1 100 ")
            if connection.queue(data if leaves else unavailable, close or not leaves):
                written.append(connection)
            if timed is not None and self._timing is not None:
                self._timing.took(timed[0], now - timed[1])
        # One write per connection: a client's pipelined requests of this turn get
        # their responses in one system call, in order.
        for connection in written:
            connection.flush()


class _Connections:
    """The open connections, least recently active first, at most `cap` of them."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._open: OrderedDict[_Connection, None] = OrderedDict()

    def admit(self, connection: _Connection) -> bool:
        """Take `connection` in; at the cap, shed the one idle longest to make room.

        False: at the cap with every connection busy, so `connection` is refused.
        """
        if len(self._open) >= self._cap:
            shed = next((c for c in self._open if c.idle), None)
            if shed is None:
                return False
            del self._open[shed]
            shed.close()
        self._open[connection] = None
        return True

    def touch(self, connection: _Connection) -> None:
        if connection in self._open:
            self._open.move_to_end(connection)

    def discard(self, connection: _Connection) -> None:
        self._open.pop(connection, None)

    def __iter__(self) -> Iterator[_Connection]:
        return iter(list(self._open))  # a copy: closing one changes the dict


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: httptools parses, HttpApp answers, this moves bytes."""

    def __init__(
        self,
        app: HttpApp,
        connections: _Connections,
        loop: asyncio.AbstractEventLoop,
        outbox: _Outbox,
        proxies: TrustedProxies | None = None,
    ) -> None:
        self._app = app
        self._connections = connections
        self._proxies = proxies
        self._loop = loop
        self._outbox = outbox
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: bytes | None = None  # over TLS: what names the verifier, not a header
        self._tls = False
        self._proxied = False  # over TLS from a trusted balancer: its header names the caller
        self._closing = False
        self._in_request = False  # from a request's first byte to its last
        self.pending = 0  # responses held in the outbox, not yet written
        self._out: list[bytes] = []  # released responses, written together by `flush`
        self._ending = False  # a response that closes the connection was released
        self.last_active = loop.time()
        self._reset()

    @property
    def idle(self) -> bool:
        """Between requests (or before the first), with nothing left to answer."""
        return not (self._in_request or self.pending or self._closing)

    def _reset(self) -> None:
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._header_bytes = 0
        self._content_type: bytes | None = None
        self._if_none_match: bytes | None = None
        self._verifier: bytes | None = None
        self._forwarded: bytes | None = None
        self._expect_continue = False
        # Bytes of this request's head seen so far. httptools hands over a header only
        # once it ends and keeps the unfinished part itself, so the bound is kept here,
        # as bytes arrive, not in on_header.
        self._in_head = True
        self._head_seen = 0
        self.receiving = True  # inside a request, from its first byte to its last
        self.request_started = self._loop.time()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP server's: always one
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            self._tls = True
            der = tls.getpeercert(binary_form=True)
            if der:
                peer = fingerprint_of(der)
                self._peer = TLS_PEER_PREFIX + peer.hex().encode()
                self._proxied = self._proxies is not None and self._proxies.trusts(peer)
        if not self._connections.admit(self):
            self._refuse(self._transport)

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._closing = True  # what the client sends is read and dropped
        transport.write(
            self._app.error(
                503,
                "too many connections; try again later",
                extra=b"Connection: close\r\nRetry-After: 1\r\n",
            )
        )
        transport.write_eof()  # the client reads the 503, then the end
        self._loop.call_later(LINGER_SECONDS, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_active = self._loop.time()
        self._connections.touch(self)
        if self._in_head:
            self._head_seen += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self._closing:
                self._reject(400, f"malformed HTTP request: {exc}")
            return
        if self._in_head and self._head_seen > self._app.max_url_bytes + MAX_HEADER_BYTES:
            self._reject(431, "request headers too large")

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def queue(self, data: bytes, close: bool) -> bool:
        """Take a released response for `flush`; True for the first since the last
        flush. Nothing after a response that closes the connection is written."""
        self.pending -= 1
        if self._ending:
            return False
        self._ending = close
        self._out.append(data)
        return len(self._out) == 1

    def flush(self) -> None:
        """Write what `queue` took (the connection may have gone meanwhile)."""
        out, self._out = self._out, []
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._ending:
            transport.close()

    def _reject(self, status: int, message: str) -> None:
        if self._transport is not None and not self._closing:
            self._closing = True  # parse nothing more; the answer leaves in order
            error = self._app.error(status, message, extra=b"Connection: close\r\n")
            self._outbox.hold(self, error, True)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_request = True
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._app.max_url_bytes:
            self._reject(414, "request URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._reject(431, "request headers too large")
            return
        lower = name.lower()
        if lower == b"content-type":
            self._content_type = value
        elif lower == b"if-none-match":
            self._if_none_match = value
        elif lower == _VERIFIER_HEADER and not self._tls:
            self._verifier = value
        elif lower == _FORWARDED_HEADER and self._proxied:
            self._forwarded = value
        elif lower == b"content-length":
            if not value.isdigit() or int(value) > self._app.max_request_bytes:
                self._reject(413, f"request body over {self._app.max_request_bytes} bytes")
        elif lower == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._parser.get_http_version() not in _VERSIONS:
            self._reject(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
            return
        if self._expect_continue and not self._closing and self._transport is not None:
            self._outbox.hold(self, b"HTTP/1.1 100 Continue\r\n\r\n", False)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._app.max_request_bytes:
            self._reject(413, f"request body over {self._app.max_request_bytes} bytes")
            return
        self._body.append(body)

    def _caller(self) -> bytes | None:
        """What names the caller to the app (http/access.py): a header, or a certificate."""
        if not self._tls:
            return self._verifier
        if self._proxied:
            forwarded = forwarded_fingerprint(self._forwarded)
            return None if forwarded is None else TLS_PEER_PREFIX + forwarded.hex().encode()
        return self._peer

    def on_message_complete(self) -> None:
        self.receiving = False
        self._in_request = False
        if self._closing or self._transport is None:
            return
        keep_alive = self._parser.should_keep_alive()
        started = self._loop.time()
        try:
            self._outbox.begin()
            response = self._app.handle(
                self._parser.get_method(),
                self._url,
                self._content_type,
                self._if_none_match,
                b"".join(self._body),
                self._caller(),
            )
        except Exception:
            # Never a trace to the client, never a dead worker.
            log.exception("HTTP request failed")
            response = self._app.error(500, "internal error", extra=b"Connection: close\r\n")
            keep_alive = False
        self._outbox.answered(self, response, not keep_alive, started)
        if not keep_alive:
            self._closing = True  # nothing after this request is read


class HttpServer:
    """Serves an HttpApp on HOST:PORT from an event loop thread (SO_REUSEPORT)."""

    def __init__(
        self,
        app: HttpApp,
        host: str,
        port: int,
        *,
        idle_seconds: float = IDLE_SECONDS,
        request_seconds: float = REQUEST_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        tls: ssl.SSLContext | None = None,
        timing: HttpTiming | None = None,
        proxies: TrustedProxies | None = None,
    ) -> None:
        if request_seconds <= 0 or idle_seconds <= 0:
            raise ValueError("idle_seconds and request_seconds must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be positive")
        self._app = app
        self._host = host
        self._port = port
        self._idle = idle_seconds
        self._request = request_seconds
        # uvloop: the loop, its transports and their writes in C (libuv), where the
        # stdlib's selector loop runs each in Python; ~2 µs of a worker's CPU per
        # cached answer, measured under the bench's load.
        self._loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self._ssl = tls
        self._proxies = proxies
        self._outbox = _Outbox(app, self._loop, timing)
        self._connections = _Connections(max_connections)
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="jpki-va-http", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                self._loop.create_server(
                    lambda: _Connection(
                        self._app, self._connections, self._loop, self._outbox, self._proxies
                    ),
                    self._host,
                    self._port,
                    reuse_port=True,
                    backlog=1024,
                    ssl=self._ssl,
                )
            )
            self._port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        self._loop.call_later(1.0, self._sweep)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _sweep(self) -> None:
        """Close idle connections, and ones that do not finish a request in time."""
        now = self._loop.time()
        idle, late = now - self._idle, now - self._request
        for connection in self._connections:
            if connection.last_active < idle or (
                connection.receiving and connection.request_started < late
            ):
                connection.close()
        self._loop.call_later(1.0, self._sweep)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for connection in self._connections:
                connection.close()
            self._loop.call_later(0.05, self._loop.stop)

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)
