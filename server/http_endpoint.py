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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Protocol, cast
from urllib.parse import unquote_to_bytes

import httptools

from server.domain import CertKind
from server.ocsp_cache import OcspReply
from server.status import NotReady

log = logging.getLogger(__name__)

OCSP_REQUEST = b"application/ocsp-request"
OCSP_RESPONSE = b"application/ocsp-response"
PKIX_CRL = b"application/pkix-crl"
MAX_HEADER_BYTES = 16_384
IDLE_SECONDS = 30.0
# A request's head and body must arrive within this, however slowly they trickle:
# a byte now and then keeps a connection from looking idle, not from this deadline.
REQUEST_SECONDS = 10.0

_REASONS = {
    200: b"OK",
    304: b"Not Modified",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}
_VERSIONS = frozenset(("1.0", "1.1"))


class Access(Protocol):
    """OCSP and CRLs for the verifier a request names (None: the header is absent)."""

    def respond(self, claimed: str | None, der: bytes) -> OcspReply: ...

    def crl(
        self, claimed: str | None, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> PublishedCrl | None: ...

    def commit(self) -> bool:
        """Make what was provided since the last commit durable; False if it cannot."""
        ...


class Forbidden(Exception):
    """The caller may not have this: 401 (no identity) or 403, with a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PublishedCrl:
    """A current CRL as HTTP serves it."""

    der: bytes
    etag: str
    this_update: float  # epoch seconds
    next_update: float


class HttpObserver(Protocol):
    def request(self, route: str, status: int) -> None: ...


class _Quiet:
    def request(self, route: str, status: int) -> None:
        pass


class _Dates:
    """HTTP dates, formatted once per second or per value."""

    def __init__(self) -> None:
        self._second = -1
        self._now = b""

    def now(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._now = formatdate(second, usegmt=True).encode()
            self._second = second
        return self._now


def _http_date(when: float) -> bytes:
    return formatdate(int(when), usegmt=True).encode()


def _etag_matches(header: bytes, etag: bytes) -> bool:
    if header.strip() == b"*":
        return True
    return any(part.strip().removeprefix(b"W/") == etag for part in header.split(b","))


def _crl_target(path: bytes) -> tuple[CertKind, bytes, str] | None:
    """/crl/{kind}/{first 8 octets of the issuer key id, hex}/{partition}.crl, or None."""
    parts = path[5:].split(b"/")
    if len(parts) != 3 or not parts[2].endswith(b".crl"):
        return None
    kind_slug, prefix_hex, partition = parts[0], parts[1], parts[2][:-4]
    if len(prefix_hex) != 16 or not (partition.isdigit() and len(partition) == 6):
        return None
    try:
        kind = CertKind.from_slug(kind_slug.decode("ascii"))
        return kind, bytes.fromhex(prefix_hex.decode("ascii")), partition.decode("ascii")
    except (UnicodeDecodeError, ValueError):
        return None


def _decode_get(path: bytes) -> bytes | None:
    """The DER request in a GET path (url-encoded base64, padding optional)."""
    text = unquote_to_bytes(path).strip()
    if not text:
        return None
    if b"-" in text or b"_" in text:
        text = text.replace(b"-", b"+").replace(b"_", b"/")
    text += b"=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class HttpApp:
    """Routes a parsed HTTP request to OCSP or the CRLs and builds the response bytes."""

    def __init__(
        self,
        access: Access,
        *,
        max_request_bytes: int,
        clock: Callable[[], float] = time.time,
        observer: HttpObserver | None = None,
    ) -> None:
        self._access = access
        self.max_request_bytes = max_request_bytes
        # base64 makes 4 of 3 octets and url-encoding at most 3 of 1.
        self.max_url_bytes = 4 * max_request_bytes + 256
        self._clock = clock
        self._observer: HttpObserver = observer or _Quiet()
        self._dates = _Dates()
        self._validators: dict[str, bytes] = {}  # etag -> ETag/Last-Modified/Expires lines

    def _head(self, status: int, length: int, content_type: bytes | None, extra: bytes) -> bytes:
        return b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
                b"Content-Type: " + content_type + b"\r\n" if content_type else b"",
                b"Content-Length: %d\r\nDate: " % length,
                self._dates.now(self._clock()),
                b"\r\n",
                extra,
                b"\r\n",
            )
        )

    def commit(self) -> bool:
        return self._access.commit()

    def error(self, status: int, message: str, route: str = "other", extra: bytes = b"") -> bytes:
        self._observer.request(route, status)
        body = message.encode() + b"\n"
        return self._head(status, len(body), b"text/plain; charset=utf-8", extra) + body

    def handle(
        self,
        method: bytes,
        url: bytes,
        content_type: bytes | None,
        if_none_match: bytes | None,
        body: bytes,
        verifier: bytes | None = None,
    ) -> bytes:
        """The response to one request; `verifier` is the X-JPKI-Verifier header."""
        path = url.split(b"?", 1)[0]
        try:
            claimed = None if verifier is None else verifier.decode("ascii").strip() or None
        except UnicodeDecodeError:
            return self.error(400, "X-JPKI-Verifier must be ASCII")
        if path.startswith(b"/crl/"):
            if method != b"GET":
                return self.error(405, "CRLs are fetched with GET", "crl", b"Allow: GET\r\n")
            return self._crl_response(claimed, path, if_none_match)
        if method == b"POST":
            return self._post(claimed, path, content_type, body)
        if method != b"GET":
            return self.error(405, "use GET or POST", extra=b"Allow: GET, POST\r\n")
        return self._get(claimed, path, if_none_match)

    def _get(self, claimed: str | None, path: bytes, if_none_match: bytes | None) -> bytes:
        if path.startswith(b"/ocsp/"):
            der = _decode_get(path[6:])
        else:
            der = _decode_get(path[1:])
            if der is None or not der.startswith(b"\x30"):
                return self.error(400, "not an OCSP request or a CRL path")
        reply = self._access.respond(claimed, der or b"")
        return self._ocsp_response(reply, if_none_match, "ocsp_get")

    def _post(
        self, claimed: str | None, path: bytes, content_type: bytes | None, body: bytes
    ) -> bytes:
        if path not in (b"/", b"/ocsp", b"/ocsp/"):
            return self.error(404, "no such resource; POST OCSP requests to /ocsp")
        if content_type is not None and content_type.split(b";")[0].strip().lower() != OCSP_REQUEST:
            return self.error(415, "expected Content-Type: application/ocsp-request", "ocsp_post")
        return self._ocsp_response(self._access.respond(claimed, body), None, "ocsp_post")

    def _validators_for(self, etag: str, this_update: float, next_update: float) -> bytes:
        lines = self._validators.get(etag)
        if lines is None:
            if len(self._validators) > 50_000:
                self._validators.clear()
            lines = b'ETag: "%s"\r\nLast-Modified: %s\r\nExpires: %s\r\n' % (
                etag.encode(),
                _http_date(this_update),
                _http_date(next_update),
            )
            self._validators[etag] = lines
        return lines

    def _cached(
        self,
        route: str,
        content_type: bytes,
        body: bytes,
        etag: str,
        this_update: float,
        next_update: float,
        if_none_match: bytes | None,
    ) -> bytes:
        validators = self._validators_for(etag, this_update, next_update)
        max_age = max(0, int(next_update - self._clock()))
        control = b"Cache-Control: max-age=%d, public, no-transform, must-revalidate\r\n" % max_age
        if if_none_match is not None and _etag_matches(if_none_match, b'"%s"' % etag.encode()):
            self._observer.request(route, 304)
            return self._head(304, 0, None, validators + control)
        self._observer.request(route, 200)
        return self._head(200, len(body), content_type, validators + control) + body

    def _ocsp_response(self, reply: OcspReply, if_none_match: bytes | None, route: str) -> bytes:
        if not reply.cacheable:
            # Error statuses and nonce answers are for this request only.
            self._observer.request(route, 200)
            return (
                self._head(200, len(reply.der), OCSP_RESPONSE, b"Cache-Control: no-cache\r\n")
                + reply.der
            )
        return self._cached(
            route,
            OCSP_RESPONSE,
            reply.der,
            reply.etag,
            reply.this_update,
            reply.next_update,
            if_none_match,
        )

    def _crl_response(self, claimed: str | None, path: bytes, if_none_match: bytes | None) -> bytes:
        target = _crl_target(path)
        if target is None:
            return self.error(404, "no such CRL", "crl")
        kind, prefix, partition = target
        try:
            found = self._access.crl(claimed, kind, prefix, partition)
        except Forbidden as exc:
            return self.error(exc.status, str(exc), "crl")
        except NotReady:
            return self.error(503, "no index loaded yet", "crl", b"Retry-After: 5\r\n")
        if found is None:
            return self.error(404, "no such CRL", "crl")
        return self._cached(
            "crl",
            PKIX_CRL,
            found.der,
            found.etag,
            found.this_update,
            found.next_update,
            if_none_match,
        )


class _Outbox:
    """Responses held until what they provide is recorded: one commit per loop turn.

    Every answer that gives status or a CRL is counted before it leaves (第41条), and
    one ledger write per request would cost more than the request; so the responses
    of one turn of the event loop leave together, right after one commit. In order:
    a connection's responses leave in the order its requests came.
    """

    def __init__(self, app: HttpApp, loop: asyncio.AbstractEventLoop) -> None:
        self._app = app
        self._loop = loop
        self._held: list[tuple[_Connection, bytes, bool]] = []

    def hold(self, connection: _Connection, data: bytes, close: bool) -> None:
        if not self._held:
            self._loop.call_soon(self._release)
        self._held.append((connection, data, close))

    def _release(self) -> None:
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
        for connection, data, close in held:
            if recorded or data.startswith(b"HTTP/1.1 100 "):
                connection.deliver(data, close)
            else:
                connection.deliver(unavailable, True)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: httptools parses, HttpApp answers, this moves bytes."""

    def __init__(
        self,
        app: HttpApp,
        connections: set[_Connection],
        loop: asyncio.AbstractEventLoop,
        outbox: _Outbox,
    ) -> None:
        self._app = app
        self._connections = connections
        self._loop = loop
        self._outbox = outbox
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self.last_active = loop.time()
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._header_bytes = 0
        self._content_type: bytes | None = None
        self._if_none_match: bytes | None = None
        self._verifier: bytes | None = None
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
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_active = self._loop.time()
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

    def deliver(self, data: bytes, close: bool) -> None:
        """Write a released response (the connection may have gone meanwhile)."""
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.write(data)
        if close:
            self._transport.close()

    def _reject(self, status: int, message: str) -> None:
        if self._transport is not None and not self._closing:
            self._closing = True  # parse nothing more; the answer leaves in order
            error = self._app.error(status, message, extra=b"Connection: close\r\n")
            self._outbox.hold(self, error, True)

    # httptools callbacks

    def on_message_begin(self) -> None:
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
        elif lower == b"x-jpki-verifier":
            self._verifier = value
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

    def on_message_complete(self) -> None:
        self.receiving = False
        if self._closing or self._transport is None:
            return
        keep_alive = self._parser.should_keep_alive()
        try:
            response = self._app.handle(
                self._parser.get_method(),
                self._url,
                self._content_type,
                self._if_none_match,
                b"".join(self._body),
                self._verifier,
            )
        except Exception:
            # Never a trace to the client, never a dead worker.
            log.exception("HTTP request failed")
            response = self._app.error(500, "internal error", extra=b"Connection: close\r\n")
            keep_alive = False
        self._outbox.hold(self, response, not keep_alive)
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
    ) -> None:
        if request_seconds <= 0 or idle_seconds <= 0:
            raise ValueError("idle_seconds and request_seconds must be positive")
        self._app = app
        self._host = host
        self._port = port
        self._idle = idle_seconds
        self._request = request_seconds
        self._loop = asyncio.new_event_loop()
        self._outbox = _Outbox(app, self._loop)
        self._connections: set[_Connection] = set()
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
                    lambda: _Connection(self._app, self._connections, self._loop, self._outbox),
                    self._host,
                    self._port,
                    reuse_port=True,
                    backlog=1024,
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
        for connection in list(self._connections):
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
            for connection in list(self._connections):
                connection.close()
            self._loop.call_later(0.05, self._loop.stop)

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)
