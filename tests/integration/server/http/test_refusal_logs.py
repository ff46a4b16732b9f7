"""Refused HTTP requests cannot flood the log (issue 15, item 11).

2,000 OCSP requests naming an unknown verifier in an 8 kB X-JPKI-Verifier header
once wrote the whole header per request: 16.7 MB in 0.9 s. Now the value is logged
cut short and escaped, and a reason at most once per window with a count of the
ones not logged one by one. The responder runs as its own process (one worker) and
its whole log is read after it stopped.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from jpki_va.core.domain import CertKind
from tests.support import Pki, start_cli_responder

REQUESTS = 2_000
#: responseStatus unauthorized (6), no responseBytes (RFC 6960 §4.2.1).
OCSP_UNAUTHORIZED = b"\x30\x03\x0a\x01\x06"


def test_refused_requests_with_a_huge_header_leave_a_small_log(pki: Pki, tmp_path: Path) -> None:
    issued = pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    der = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, issued.issuer, hashes.SHA256())
        .build()
        .public_bytes(Encoding.DER)
    )
    # Newlines cannot be sent in a header; a quote and a tab must not break a log line.
    claimed = 'no-such-verifier"\t' + "x" * 8_192
    responder = start_cli_responder(pki, tmp_path / "state", tmp_path / "responder.log")
    try:
        before = responder.log_file.stat().st_size
        connection = http.client.HTTPConnection("127.0.0.1", responder.http_port, timeout=10)
        try:
            for _ in range(REQUESTS):
                connection.request(
                    "POST",
                    "/ocsp",
                    body=der,
                    headers={
                        "Content-Type": "application/ocsp-request",
                        "X-JPKI-Verifier": claimed,
                    },
                )
                response = connection.getresponse()
                assert (response.status, response.read()) == (200, OCSP_UNAUTHORIZED)
        finally:
            connection.close()
    finally:
        log = responder.stop()
    written = log.encode()[before:].decode(errors="replace")
    assert len(written.encode()) < 20_000, written[:2_000]
    assert "x" * 100 not in written
    lines = [json.loads(line) for line in written.splitlines() if "HTTP OCSP refused" in line]
    assert lines, written[:2_000]
    # Every refusal is in the log: one by one (the first of a window) or counted.
    counted = sum(
        int(m.group(1)) if (m := re.search(r"(\d+) more in the last", line["message"])) else 0
        for line in lines
    )
    first = sum(1 for line in lines if "no-such-verifier" in line["message"])
    assert first + counted == REQUESTS, lines
    assert all(len(line["message"]) < 400 for line in lines), lines
