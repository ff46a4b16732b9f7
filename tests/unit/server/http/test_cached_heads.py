"""The heads of cached answers: built once per answer, yet Date and max-age keep time."""

from __future__ import annotations

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
