"""HTTP OCSP and CRLs as a sans-I/O application: a parsed request in, a response out."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Protocol
from urllib.parse import unquote_to_bytes

from jpki_va.core.domain import CertKind
from jpki_va.server.responder.ocsp_cache import OcspReply
from jpki_va.server.responder.status import NotReady

OCSP_REQUEST = b"application/ocsp-request"


OCSP_RESPONSE = b"application/ocsp-response"


PKIX_CRL = b"application/pkix-crl"


PKIX_CERT = b"application/pkix-cert"


# The public announcement of issuer compromises (第15条第3項): for anyone, no verifier.
ANNOUNCEMENT_PATH = b"/announcements/issuer-compromise.p7m"
PKCS7_MIME = b"application/pkcs7-mime; smime-type=signed-data"


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


class Access(Protocol):
    """OCSP and CRLs for the verifier a request names (None: the header is absent)."""

    def respond(self, claimed: str | None, der: bytes) -> OcspReply: ...

    def crl(
        self, claimed: str | None, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> PublishedFile | None: ...

    def delta_crl(
        self, claimed: str | None, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> PublishedFile | None: ...

    def ca_certificate(self, kind: CertKind | None, key_id_prefix: bytes) -> PublishedFile | None:
        """The root (kind None) or an issuing CA generation; public."""
        ...

    def arl(self, key_id_prefix: bytes) -> PublishedFile | None:
        """The root's ARL; public."""
        ...

    def begin_turn(self) -> None:
        """Requests of one event-loop turn follow, until `commit` ends it."""
        ...

    def commit(self) -> bool:
        """Make what was provided since the last commit durable; False if it cannot."""
        ...

    def announcement(self) -> bytes | None:
        """The signed public announcement of issuer compromises, or None."""
        ...


class Forbidden(Exception):
    """The caller may not have this: 401 (no identity) or 403, with a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PublishedFile:
    """A current CRL, ARL or CA certificate as HTTP serves it."""

    der: bytes
    etag: str
    this_update: float  # epoch seconds
    next_update: float
    # Count the provision (第41条): called when the body is sent, not for a 304, which
    # provides nothing the verifier did not hold already.
    sent: Callable[[], None] = lambda: None


class HttpObserver(Protocol):
    def request(self, route: str, status: int) -> None: ...


class _Quiet:
    def request(self, route: str, status: int) -> None:
        pass


class _Heads:
    """The heads of cacheable responses from parts built once; per request a join.

    Per second: the Date line, and per nextUpdate the Cache-Control line whose max-age
    counts down to it, shared by every answer of that nextUpdate (one index's answers
    share a few). Per (thisUpdate, nextUpdate): the Last-Modified and Expires lines.
    So a cached answer costs no formatting of dates; its ETag and length go into one
    format per request (≈ 0.15 µs more than a head kept per answer, measured), where
    a head kept per answer cost ≈ 330 bytes of each answer a worker served, outside
    the OCSP cache's budget.
    """

    # (thisUpdate, nextUpdate) pairs remembered; past it they are dropped and built
    # again. An index's answers share a few, so this is never reached in practice.
    KEPT = 1024

    def __init__(self) -> None:
        self._second = -1
        self.date = b""  # "Date: ...\r\n" of the current second
        self._tails: dict[float, bytes] = {}  # nextUpdate -> Cache-Control, Date, end
        self._dates: dict[tuple[float, float], bytes] = {}  # -> Last-Modified, Expires

    def tick(self, now: float) -> None:
        """Move to the second of `now` (the clock's reading for this request)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self.date = b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
            self._tails.clear()

    def tail(self, next_update: float) -> bytes:
        """Cache-Control (RFC 5019 §6: max-age never past nextUpdate), Date, the blank
        line. Counted from the end of this second: what the exact age would be at the
        last instant of the second, so never longer than it at any."""
        tail = self._tails.get(next_update)
        if tail is None:
            max_age = max(0, int(next_update - self._second - 1))
            tail = self._tails[next_update] = (
                b"Cache-Control: max-age=%d, public, no-transform, must-revalidate\r\n" % max_age
                + self.date
                + b"\r\n"
            )
        return tail

    def prefix(
        self, etag: str, content_type: bytes, length: int, this_update: float, next_update: float
    ) -> bytes:
        """Status line to validators of a 200 for the body `etag` names."""
        return b'HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\nETag: "%s"\r\n%s' % (
            content_type,
            length,
            etag.encode(),
            self.dates(this_update, next_update),
        )

    def dates(self, this_update: float, next_update: float) -> bytes:
        """The Last-Modified and Expires lines."""
        key = (this_update, next_update)
        dates = self._dates.get(key)
        if dates is None:
            if len(self._dates) >= self.KEPT:
                self._dates.clear()
            dates = self._dates[key] = b"Last-Modified: %s\r\nExpires: %s\r\n" % (
                _http_date(this_update),
                _http_date(next_update),
            )
        return dates


def _http_date(when: float) -> bytes:
    return formatdate(int(when), usegmt=True).encode()


def _etag_matches(header: bytes, etag: bytes) -> bool:
    if header.strip() == b"*":
        return True
    return any(part.strip().removeprefix(b"W/") == etag for part in header.split(b","))


def _crl_target(path: bytes) -> tuple[CertKind, bytes, str, bool] | None:
    """/crl/{kind}/{first 8 octets of the issuer key id, hex}/{partition}.crl (or
    .delta.crl) -> (kind, key id prefix, partition, delta), or None."""
    parts = path[5:].split(b"/")
    if len(parts) != 3 or not parts[2].endswith(b".crl"):
        return None
    kind_slug, partition = parts[0], parts[2][:-4]
    delta = partition.endswith(b".delta")
    partition = partition.removesuffix(b".delta")
    prefix = _key_id_prefix(parts[1])
    if prefix is None or not (partition.isdigit() and len(partition) == 6):
        return None
    try:
        kind = CertKind.from_slug(kind_slug.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return kind, prefix, partition.decode("ascii"), delta


def _key_id_prefix(text: bytes) -> bytes | None:
    """The first 8 octets of a key id, as 16 hex digits in a URL."""
    if len(text) != 16:
        return None
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _ca_target(path: bytes) -> tuple[CertKind | None, bytes] | None:
    """/ca/root/{key id prefix}.crt or /ca/{kind}/{key id prefix}.crt, or None."""
    parts = path[4:].split(b"/")
    if len(parts) != 2 or not parts[1].endswith(b".crt"):
        return None
    prefix = _key_id_prefix(parts[1][:-4])
    if prefix is None:
        return None
    if parts[0] == b"root":
        return None, prefix
    try:
        return CertKind.from_slug(parts[0].decode("ascii")), prefix
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
        health: Callable[[], bool] | None = None,
    ) -> None:
        self._access = access
        # GET /health for a balancer's HTTP check: 200 while in rotation, else 503.
        self._health = health
        self.max_request_bytes = max_request_bytes
        # base64 makes 4 of 3 octets and url-encoding at most 3 of 1.
        self.max_url_bytes = 4 * max_request_bytes + 256
        self._clock = clock
        self._observer: HttpObserver = observer or _Quiet()
        self._heads = _Heads()

    def _head(self, status: int, length: int, content_type: bytes | None, extra: bytes) -> bytes:
        heads = self._heads
        heads.tick(self._clock())
        return b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
                b"Content-Type: " + content_type + b"\r\n" if content_type else b"",
                b"Content-Length: %d\r\n" % length,
                heads.date,
                extra,
                b"\r\n",
            )
        )

    def begin_turn(self) -> None:
        self._access.begin_turn()

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
        if path.startswith((b"/crl/", b"/ca/", b"/arl/")) or path == ANNOUNCEMENT_PATH:
            return self._file(method, claimed, path, if_none_match)
        if method == b"POST":
            return self._post(claimed, path, content_type, body)
        if method != b"GET":
            return self.error(405, "use GET or POST", extra=b"Allow: GET, POST\r\n")
        return self._get(claimed, path, if_none_match)

    def _health_response(self) -> bytes:
        serving = self._health is not None and self._health()
        body = b"SERVING\n" if serving else b"NOT_SERVING\n"
        status = 200 if serving else 503
        self._observer.request("health", status)
        return self._head(status, len(body), b"text/plain; charset=utf-8", b"") + body

    def _get(self, claimed: str | None, path: bytes, if_none_match: bytes | None) -> bytes:
        if path == b"/health" and self._health is not None:
            return self._health_response()
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
        if (
            content_type is not None
            and content_type != OCSP_REQUEST
            and content_type.split(b";")[0].strip().lower() != OCSP_REQUEST
        ):
            return self.error(415, "expected Content-Type: application/ocsp-request", "ocsp_post")
        return self._ocsp_response(self._access.respond(claimed, body), None, "ocsp_post")

    def _cached(
        self,
        route: str,
        content_type: bytes,
        body: bytes,
        etag: str,
        this_update: float,
        next_update: float,
        if_none_match: bytes | None,
        sent: Callable[[], None] | None = None,
        certs: bytes = b"",
    ) -> bytes:
        """A 200 or 304 of a cacheable body; `certs`, the OCSP certs field that ends
        the body, joined to it here (`OcspReply.certs`: kept apart, shared)."""
        heads = self._heads
        heads.tick(self._clock())
        if if_none_match is not None and _etag_matches(if_none_match, b'"%s"' % etag.encode()):
            self._observer.request(route, 304)
            return b"".join(
                (
                    b'HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\nETag: "%s"\r\n'
                    % etag.encode(),
                    heads.dates(this_update, next_update),
                    heads.tail(next_update),
                )
            )
        if sent is not None:
            sent()
        self._observer.request(route, 200)
        return b"".join(
            (
                heads.prefix(etag, content_type, len(body) + len(certs), this_update, next_update),
                heads.tail(next_update),
                body,
                certs,
            )
        )

    def _ocsp_response(self, reply: OcspReply, if_none_match: bytes | None, route: str) -> bytes:
        if not reply.cacheable:
            # Error statuses and nonce answers are for this request only.
            self._observer.request(route, 200)
            der = reply.der
            return self._head(200, len(der), OCSP_RESPONSE, b"Cache-Control: no-cache\r\n") + der
        return self._cached(
            route,
            OCSP_RESPONSE,
            reply.body,
            reply.etag,
            reply.this_update,
            reply.next_update,
            if_none_match,
            certs=reply.certs,
        )

    def _file(
        self, method: bytes, claimed: str | None, path: bytes, if_none_match: bytes | None
    ) -> bytes:
        """CRLs (for verifiers); the announcement, CA certificates and the root's ARL
        (for anyone): GET only."""
        if path == ANNOUNCEMENT_PATH:
            if method != b"GET":
                return self.error(405, "fetched with GET", "announcement", b"Allow: GET\r\n")
            return self._announcement()
        if method != b"GET":
            return self.error(405, "CRLs are fetched with GET", "crl", b"Allow: GET\r\n")
        if path.startswith(b"/crl/"):
            return self._crl_response(claimed, path, if_none_match)
        return self._ca_response(path, if_none_match)

    def _announcement(self) -> bytes:
        try:
            signed = self._access.announcement()
        except NotReady:
            return self.error(503, "no index loaded yet", "announcement", b"Retry-After: 5\r\n")
        if signed is None:
            return self.error(404, "no issuer key compromise has been announced", "announcement")
        self._observer.request("announcement", 200)
        return self._head(200, len(signed), PKCS7_MIME, b"Cache-Control: no-cache\r\n") + signed

    def _crl_response(self, claimed: str | None, path: bytes, if_none_match: bytes | None) -> bytes:
        target = _crl_target(path)
        if target is None:
            return self.error(404, "no such CRL", "crl")
        kind, prefix, partition, delta = target
        fetch = self._access.delta_crl if delta else self._access.crl
        try:
            found = fetch(claimed, kind, prefix, partition)
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
            found.sent,
        )

    def _ca_response(self, path: bytes, if_none_match: bytes | None) -> bytes:
        """A CA certificate (AIA caIssuers) or the root's ARL (the issuing CAs' CRLDP)."""
        found: PublishedFile | None = None
        content_type = PKIX_CERT
        try:
            if path.startswith(b"/arl/"):
                content_type = PKIX_CRL
                name = path[5:]
                prefix = _key_id_prefix(name[:-4]) if name.endswith(b".crl") else None
                found = None if prefix is None else self._access.arl(prefix)
            elif (target := _ca_target(path)) is not None:
                found = self._access.ca_certificate(*target)
        except NotReady:
            return self.error(503, "no index loaded yet", "ca", b"Retry-After: 5\r\n")
        if found is None:
            return self.error(404, "no such CA certificate or ARL", "ca")
        return self._cached(
            "ca",
            content_type,
            found.der,
            found.etag,
            found.this_update,
            found.next_update,
            if_none_match,
        )
