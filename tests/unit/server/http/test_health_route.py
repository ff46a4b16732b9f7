"""GET /health: what a balancer's HTTP check reads (200 in rotation, else 503)."""

from __future__ import annotations

from jpki_va.core.domain import CertKind
from jpki_va.server.http.app import HttpApp, PublishedFile
from jpki_va.server.responder.ocsp_cache import OcspReply


class _NoAccess:
    """Health touches no answer, no gate and no ledger."""

    def respond(self, claimed: str | None, der: bytes) -> OcspReply:
        raise AssertionError("health asked for an OCSP answer")

    def crl(
        self, claimed: str | None, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> PublishedFile | None:
        raise AssertionError("health asked for a CRL")

    delta_crl = crl

    def ca_certificate(self, kind: CertKind | None, key_id_prefix: bytes) -> PublishedFile | None:
        raise AssertionError("health asked for a CA certificate")

    def arl(self, key_id_prefix: bytes) -> PublishedFile | None:
        raise AssertionError("health asked for the ARL")

    def begin_turn(self) -> None:
        pass

    def commit(self) -> bool:
        raise AssertionError("health committed provisions")

    def announcement(self) -> bytes | None:
        raise AssertionError("health asked for the announcement")


def _status(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_health_follows_the_rotation_flag() -> None:
    serving = [True]
    app = HttpApp(_NoAccess(), max_request_bytes=1024, health=lambda: serving[0])
    assert _status(app.handle(b"GET", b"/health", None, None, b"")) == (200, b"SERVING\n")
    serving[0] = False
    assert _status(app.handle(b"GET", b"/health?x=1", None, None, b"")) == (
        503,
        b"NOT_SERVING\n",
    )


def test_without_a_health_source_the_path_is_no_resource() -> None:
    app = HttpApp(_NoAccess(), max_request_bytes=1024)
    status, _ = _status(app.handle(b"GET", b"/health", None, None, b""))
    assert status == 400
