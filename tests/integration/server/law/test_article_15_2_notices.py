"""第15条第2項, 第16条の14第2項, 第34条第2項, 第35条の14第2項: 通知 to the holder.

A record error that ends a certificate puts a notice in the registry's outbox in the
same transaction; the signer delivers it through its channel: printable files in a
spool by default, a webhook (here a real HTTP server on 127.0.0.1) where configured.
Operators list the outbox and mark spooled notices sent with `jpki-va registry
notices`; the signer's metrics count what is pending and how old the oldest is.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest

from jpki_va.core.domain import CertKind, serial_to_bytes
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from tests.support import JPKI_VA, Pki, fresh_key, running_pki, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    with running_pki(
        tmp_path_factory.mktemp("notices"),
        softhsm_token,
        publish=False,
        notice_delivery_interval=0.1,
        metrics_port=0,
    ) as running:
        yield running


def _lose(pki: Pki, kind: CertKind, serial: int, cause: int) -> None:
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=int(kind),  # type: ignore[arg-type]
            serial=serial_to_bytes(serial),
            cause=cause,  # type: ignore[arg-type]
        ),
        timeout=30,
    )


def _notices(pki: Pki, *, pending: bool = False) -> list[signer_pb2.HolderNotice]:
    reply = pki.signer_stub.ListNotices(
        signer_pb2.ListNoticesRequest(pending_only=pending), timeout=30
    )
    return list(reply.notices)


def _metric(pki: Pki, name: str) -> float:
    url = f"http://127.0.0.1:{pki.signer.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name)))


def _cli(pki: Pki, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JPKI_VA, "registry", "notices", *args, "--signer", f"127.0.0.1:{pki.signer.port}",
         "--insecure-loopback"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_article_34_2_record_error_notice_spooled_listed_and_marked_sent(pki: Pki) -> None:
    card = pki.issue(CertKind.CARD_SIGN, resident_code="15000000001")
    auth = pki.issue(CertKind.CARD_AUTH, resident_code="15000000001", key=fresh_key())
    mobile = pki.issue(
        CertKind.MOBILE_AUTH, resident_code="15000000001", card=card, key=fresh_key()
    )
    other = pki.issue(CertKind.CARD_AUTH, resident_code="15000000002", key=fresh_key())
    # A holder's own request needs no notice; nor does refused input make one.
    _lose(pki, CertKind.CARD_AUTH, other.serial, va_pb2.LOSS_CAUSE_HOLDER_REQUEST)
    with pytest.raises(grpc.RpcError) as info:
        _lose(pki, CertKind.CARD_AUTH, 0x7777, va_pb2.LOSS_CAUSE_RECORD_ERROR)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert _notices(pki) == []

    # A record error: one notice, for the card certificate; the mobile one that
    # follows it (第35条の13) lost effect by another cause and gets none.
    _lose(pki, CertKind.CARD_AUTH, auth.serial, va_pb2.LOSS_CAUSE_RECORD_ERROR)
    (notice,) = _notices(pki)
    assert int.from_bytes(notice.serial, "big") == auth.serial
    assert notice.article == "第34条第2項"
    assert "記録誤り等があった" in notice.text and "効力を失いました" in notice.text
    assert mobile.serial not in {int.from_bytes(n.serial, "big") for n in _notices(pki)}

    # Delivered to the spool as a printable notice, still pending until mailed.
    spool = pki.signer.config.notice_spool_dir / f"notice-{notice.id:08d}.txt"
    wait_for(spool.is_file, "the spooled notice", timeout=10)
    letter = spool.read_text()
    assert "試験 太郎 様" in letter and "千代田区1-1" in letter and "第34条第2項" in letter
    assert spool.stat().st_mode & 0o077 == 0
    assert _metric(pki, "jpki_va_holder_notices_pending") == 1
    assert _metric(pki, "jpki_va_holder_notice_oldest_pending_seconds") >= 0

    listed = _cli(pki, "list", "--pending", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["id"] == notice.id and row["delivery"] == f"spool:{spool.name}"
    assert row["sent_at"] is None

    # Bad input is refused with one line and changes nothing.
    for args, code, words in (
        (("mark-sent", "--id", "0"), 2, "notice number"),
        (("mark-sent", "--id", "9999"), 3, "no notice 9999"),
    ):
        refused = _cli(pki, *args)
        assert refused.returncode == code and words in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    marked = _cli(pki, "mark-sent", "--id", str(notice.id))
    assert marked.returncode == 0, marked.stderr
    again = _cli(pki, "mark-sent", "--id", str(notice.id))
    assert again.returncode == 3 and "already sent" in again.stderr
    assert _notices(pki, pending=True) == []
    assert _metric(pki, "jpki_va_holder_notices_pending") == 0
    assert "no pending notices" in _cli(pki, "list", "--pending").stdout


class _Webhook(BaseHTTPRequestHandler):
    """Answers 503 to the first POST (the signer must retry), 204 after."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append(body)
        self.send_response(503 if len(self.received) == 1 else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/notices"
    finally:
        server.shutdown()
        server.server_close()


def test_article_15_2_record_error_notice_through_a_webhook(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig, webhook: str
) -> None:
    with running_pki(
        tmp_path_factory.mktemp("webhook"), softhsm_token, publish=False,
        notice_delivery_interval=0.1, notice_webhook=webhook,
    ) as running:  # fmt: skip
        card = running.issue(CertKind.CARD_SIGN, resident_code="15000000003")
        _lose(running, CertKind.CARD_SIGN, card.serial, va_pb2.LOSS_CAUSE_RECORD_ERROR)
        (sent,) = wait_for(
            lambda: [n for n in _notices(running) if n.HasField("sent_at")],
            "the webhook to take the notice",
            timeout=15,
        )
    assert sent.delivery == "webhook:HTTP 204"
    first, second = _Webhook.received  # refused once, delivered on the next round
    assert first == second
    assert second["article"] == "第15条第2項" and second["serial"] == f"{card.serial:X}"
    assert "記録誤り等があった" in second["text"]
    assert "resident_code" not in second  # the holder's 住民票コード stays in the registry
    assert not Path(running.signer.config.notice_spool_dir).exists()
