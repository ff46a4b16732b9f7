"""The HTTP endpoint: any request gets a well-formed response, or the connection closes.

Two layers. `HttpApp` (http/app.py, sans-I/O) is called with any method, URL,
headers and body: it must return one whole HTTP/1.1 response (status line, headers,
a Content-Length its body matches), never raise. The server (http/server.py) is fed
arbitrary bytes on real connections on 127.0.0.1: every byte it sends back must be
whole responses, the connection must end, and nothing may go wrong inside it (the
event loop and the server log no error), and it must still answer afterwards.

What OCSP says behind it comes from real parts, not a recording: the request is
parsed by pki/ocsp_wire.py, and the answer is malformedRequest or a cacheable
response (so the ETag and 304 paths are reached); a CRL path gets a CRL, a refusal,
"not ready" or nothing, by its partition. The responder's own gate and index answer
over HTTP in test_servicers_fuzz.py.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jpki_va.core.domain import CertKind
from jpki_va.server.http.app import Forbidden, HttpApp, PublishedFile
from jpki_va.server.http.server import HttpServer
from jpki_va.server.pki.ocsp_wire import (
    MalformedRequest,
    ResponseStatus,
    parse_request,
    unsuccessful,
)
from jpki_va.server.responder.ocsp_cache import OcspReply
from jpki_va.server.responder.status import NotReady

CORPUS = Path(__file__).resolve().parent / "corpus"
HTTP_SEEDS = [p.read_bytes() for p in sorted((CORPUS / "http").glob("*.http"))]
OCSP_SEEDS = [p.read_bytes() for p in sorted((CORPUS / "ocsp").glob("*.der"))]
MAX_REQUEST = 2048
ANSWER = b"\x30\x03\x0a\x01\x00"  # stands for a signed response: only its bytes matter here


class ParsingAccess:
    """The Access an HttpApp calls, answering from the real OCSP request parser."""

    def respond(self, claimed: str | None, der: bytes) -> OcspReply:
        try:
            request = parse_request(der, 10)
        except MalformedRequest:
            return OcspReply(unsuccessful(ResponseStatus.MALFORMED_REQUEST))
        if request.nonce is not None:
            return OcspReply(ANSWER)
        etag = hashlib.sha256(request.request_list).hexdigest()[:16]
        return OcspReply(ANSWER, True, 1.8e9, 1.8e9 + 86_400, etag, (("good", "none"),))

    def crl(
        self, claimed: str | None, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> PublishedFile | None:
        choice = int(partition) % 4
        if choice == 0:
            return PublishedFile(b"\x30\x00", partition, 1.8e9, 1.8e9 + 86_400)
        if choice == 1:
            raise Forbidden(401 if claimed is None else 403, "not for this verifier")
        if choice == 2:
            raise NotReady("no index loaded yet")
        return None

    delta_crl = crl

    def ca_certificate(self, kind: CertKind | None, key_id_prefix: bytes) -> PublishedFile | None:
        return self.arl(key_id_prefix)

    def arl(self, key_id_prefix: bytes) -> PublishedFile | None:
        if key_id_prefix[0] % 2:
            raise NotReady("no index loaded yet")
        return PublishedFile(b"\x30\x00", key_id_prefix.hex(), 1.8e9, 1.8e9 + 86_400)

    def begin_turn(self) -> None:
        pass

    def commit(self) -> bool:
        return True

    def announcement(self) -> bytes | None:
        return None


def _responses(data: bytes) -> list[int]:
    """The status of each whole HTTP/1.1 response in `data`; fails on anything else."""
    statuses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"an unfinished response head: {data[:200]!r}"
        lines = head.split(b"\r\n")
        version, status, reason = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1" and status.isdigit() and reason, lines[0]
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        length = 0 if status == b"100" else int(headers[b"Content-Length"])
        assert len(rest) >= length, "a body shorter than its Content-Length"
        statuses.append(int(status))
        data = rest[length:]
    return statuses


_methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"]), st.binary(max_size=8)
)
_get_paths = st.one_of(
    st.binary(max_size=60).map(lambda b: b"/" + b),
    st.builds(
        lambda der, prefix: prefix + base64.b64encode(der).replace(b"/", b"%2F"),
        st.sampled_from(OCSP_SEEDS) | st.binary(max_size=40),
        st.sampled_from([b"/", b"/ocsp/"]),
    ),
    st.builds(
        lambda kind, key, part, tail: b"/crl/%s/%s/%s%s" % (kind, key, part, tail),
        st.sampled_from([k.slug.encode() for k in CertKind]) | st.binary(max_size=10),
        st.sampled_from([b"0011223344556677"]) | st.binary(max_size=20),
        st.from_regex(rb"\A[0-9]{6}\Z") | st.binary(max_size=8),
        st.sampled_from([b".crl", b"", b".crl?x=1", b".delta.crl"]),
    ),
    st.builds(
        lambda folder, key, tail: b"%s%s%s" % (folder, key, tail),
        st.sampled_from([b"/arl/", b"/ca/root/", b"/ca/card-auth/", b"/ca/"]),
        st.sampled_from([b"0011223344556677", b"0111223344556677"]) | st.binary(max_size=20),
        st.sampled_from([b".crl", b".crt", b"", b".crt/x"]),
    ),
)
_headers = st.none() | st.binary(max_size=40)


@given(
    _methods,
    _get_paths,
    _headers,
    _headers | st.just(b'"0123456789abcdef", *'),
    st.sampled_from(OCSP_SEEDS) | st.binary(max_size=200),
    _headers,
)
@example(b"GET", b"/crl/card-sign/0011223344556677/131016.crl", None, b"*", b"", b"\xff")
@example(b"POST", b"/ocsp", b"application/ocsp-request; x", None, b"", None)
def test_the_app_answers_any_request_with_one_whole_response(
    method: bytes,
    url: bytes,
    content_type: bytes | None,
    if_none_match: bytes | None,
    body: bytes,
    verifier: bytes | None,
) -> None:
    app = HttpApp(ParsingAccess(), max_request_bytes=MAX_REQUEST, clock=lambda: 1.8e9 + 60)
    response = app.handle(method, url, content_type, if_none_match, body, verifier)
    (status,) = _responses(response)
    assert status != 500


# the server -------------------------------------------------------------------------------
class _Errors(logging.Handler):
    """Keeps every error the event loop or the server logs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[HttpServer, _Errors]]:
    errors = _Errors()
    loggers = [logging.getLogger(n) for n in ("asyncio", "jpki_va.server.http.server")]
    for logger in loggers:
        logger.addHandler(errors)
    app = HttpApp(ParsingAccess(), max_request_bytes=MAX_REQUEST)
    running = HttpServer(app, "127.0.0.1", 0, idle_seconds=2.0, request_seconds=2.0)
    running.start()
    try:
        yield running, errors
    finally:
        running.stop()
        for logger in loggers:
            logger.removeHandler(errors)


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close first (a refused head), and that is an answer
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def _mutated(seed: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf)))
        op = data.draw(st.sampled_from(("set", "insert", "delete")))
        if op == "set" and pos < len(buf):
            buf[pos] = data.draw(st.sampled_from(b"\x00\r\n :/%\x7f\xff0aZ"))
        elif op == "insert":
            buf[pos:pos] = data.draw(
                st.sampled_from([b"\r\n", b"\r\n\r\n", b"Content-Length: 99\r\n", b"\x00"])
                | st.binary(min_size=1, max_size=8)
            )
        else:
            del buf[pos : pos + data.draw(st.integers(1, 8))]
    return bytes(buf)


@given(st.data())
def test_the_server_answers_any_bytes_or_closes(
    server: tuple[HttpServer, _Errors], data: st.DataObject
) -> None:
    running, errors = server
    how = data.draw(st.sampled_from(("bytes", "seed", "mutated", "pipelined")))
    if how == "bytes":
        sent = data.draw(st.binary(max_size=300))
    elif how == "pipelined":
        sent = b"".join(data.draw(st.lists(st.sampled_from(HTTP_SEEDS), min_size=2, max_size=4)))
    else:
        sent = data.draw(st.sampled_from(HTTP_SEEDS))
        if how == "mutated":
            sent = _mutated(sent, data)
    reply = _exchange(running.port, sent)
    statuses = _responses(reply)
    assert 500 not in statuses
    assert not errors.records, [r.getMessage() for r in errors.records]


def test_the_server_still_answers_after_the_fuzzing(server: tuple[HttpServer, _Errors]) -> None:
    running, errors = server
    for seed in HTTP_SEEDS:
        assert _responses(_exchange(running.port, seed))
    assert not errors.records
