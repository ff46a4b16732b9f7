"""The heads of cached answers: built once per answer, yet Date and max-age keep time."""

from __future__ import annotations

import tracemalloc
from email.utils import parsedate_to_datetime

from jpki_va.core.domain import CertKind
from jpki_va.server.http.app import HttpApp, PublishedFile
from jpki_va.server.responder.ocsp_cache import OcspReply

T0 = 1_800_000_000.25  # an instant a quarter of a second into its second


def _reply(body: bytes, next_update: float) -> OcspReply:
    return OcspReply(
        body,
        cacheable=True,
        this_update=T0 - 3600,
        next_update=next_update,
        etag=body.hex()[:32],
        answers=(("good", "issued"),),
    )


class _Replies:
    """OCSP by request body: two cacheable answers with different nextUpdates."""

    def __init__(self) -> None:
        self.replies = {
            b"a": _reply(b"\x30\x03\x0a\x01\x00" + b"A" * 300, T0 + 100.5),
            b"b": _reply(b"\x30\x03\x0a\x01\x00" + b"B" * 20, T0 + 7200.9),
        }

    def respond(self, claimed: str | None, der: bytes) -> OcspReply:
        return self.replies[der]

    def crl(
        self, claimed: str | None, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> PublishedFile | None:
        return None

    delta_crl = crl

    def ca_certificate(self, kind: CertKind | None, key_id_prefix: bytes) -> PublishedFile | None:
        return None

    def arl(self, key_id_prefix: bytes) -> PublishedFile | None:
        return None

    def begin_turn(self) -> None:
        pass

    def commit(self) -> bool:
        return True

    def announcement(self) -> bytes | None:
        return None


def _parse(response: bytes) -> tuple[bytes, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert len(headers) == len(lines), "a header repeated"
    return status.encode(), headers, body


def _max_age(headers: dict[str, str]) -> int:
    return int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])


def test_cached_heads_follow_the_clock_and_each_answer() -> None:
    now = [T0]
    access = _Replies()
    app = HttpApp(access, max_request_bytes=1024, clock=lambda: now[0])

    def post(body: bytes) -> tuple[bytes, dict[str, str], bytes]:
        return _parse(app.handle(b"POST", b"/ocsp", b"application/ocsp-request", None, body))

    seen: dict[bytes, list[dict[str, str]]] = {b"a": [], b"b": []}
    for step in range(3):
        now[0] = T0 + step
        for key in (b"b", b"a", b"b"):  # the second b: the head already built
            status, headers, body = post(key)
            reply = access.replies[key]
            assert status == b"HTTP/1.1 200 OK"
            assert body == reply.der
            assert headers["Content-Length"] == str(len(reply.der))
            assert headers["Content-Type"] == "application/ocsp-response"
            assert headers["ETag"] == f'"{reply.etag}"'
            assert parsedate_to_datetime(headers["Date"]).timestamp() == int(now[0])
            assert parsedate_to_datetime(headers["Expires"]).timestamp() == int(reply.next_update)
            # Never cached past nextUpdate, and at most the rest of a second short of it.
            exact = reply.next_update - now[0]
            assert int(exact) - 1 <= _max_age(headers) <= exact
            seen[key].append(headers)
    assert [_max_age(h) for h in seen[b"a"]] == [99, 98, 97]
    assert [_max_age(h) for h in seen[b"b"][::2]] == [7200, 7199, 7198]

    etag = access.replies[b"a"].etag.encode()
    # A GET (RFC 5019) names the request in its URL: b"a" is YQ in base64.
    status, headers, body = _parse(app.handle(b"GET", b"/ocsp/YQ", None, b'"%s"' % etag, b""))
    assert status == b"HTTP/1.1 304 Not Modified"
    assert body == b"" and headers["Content-Length"] == "0"
    assert headers["ETag"] == f'"{etag.decode()}"' and _max_age(headers) == 97

    now[0] = T0 + 200  # past nextUpdate: max-age stops at 0
    assert _max_age(post(b"a")[1]) == 0


def test_a_cached_answer_leaves_in_the_exact_bytes_of_rfc_5019() -> None:
    """Head and body byte for byte: header order and spelling are part of the wire
    (caches and validators in the field parse them), and the certs field kept apart
    from a reply joins its body."""
    now = [T0]
    access = _Replies()
    split = OcspReply(
        b"\x30\x03\x0a\x01\x00",
        cacheable=True,
        this_update=T0 - 3600,
        next_update=T0 + 100.5,
        etag="0123456789abcdef0123456789abcdef",
        answers=(("good", "issued"),),
        certs=b"C" * 40,
    )
    access.replies[b"c"] = split
    app = HttpApp(access, max_request_bytes=1024, clock=lambda: now[0])
    validators = (
        b'ETag: "0123456789abcdef0123456789abcdef"\r\n'
        b"Last-Modified: Fri, 15 Jan 2027 07:00:00 GMT\r\n"
        b"Expires: Fri, 15 Jan 2027 08:01:40 GMT\r\n"
        b"Cache-Control: max-age=99, public, no-transform, must-revalidate\r\n"
        b"Date: Fri, 15 Jan 2027 08:00:00 GMT\r\n\r\n"
    )
    assert app.handle(b"POST", b"/ocsp", b"application/ocsp-request", None, b"c") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n"
        b"Content-Length: 45\r\n" + validators + b"\x30\x03\x0a\x01\x00" + b"C" * 40
    )
    revalidated = app.handle(
        b"GET", b"/ocsp/Yw", None, b'W/"0123456789abcdef0123456789abcdef"', b""
    )
    assert revalidated == b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n" + validators


def test_the_app_keeps_nothing_per_answer_it_serves() -> None:
    """A worker's OCSP memory is the cache's budget alone: serving answers leaves
    nothing behind per answer (no head kept per ETag)."""
    access = _Replies()
    for i in range(2000):
        body = b"\x30\x03\x0a\x01\x00" + i.to_bytes(4, "big") * 80
        access.replies[b"%d" % i] = _reply(body, T0 + 7200.9)
    app = HttpApp(access, max_request_bytes=1024, clock=lambda: T0)
    post = b"POST", b"/ocsp", b"application/ocsp-request", None
    app.handle(*post, b"0")  # the shared parts (Date, Cache-Control, dates) built once
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            app.handle(*post, b"%d" % i)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2000 * 8  # nothing per answer (a few objects of the loop at most)
