"""Only one supervisor's workers share a port: a second responder started on a port a
live one holds (gRPC or HTTP, from another state directory) refuses to start with one
line and a non-zero exit, and the first keeps answering every call (issue 15, item 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from jpki_va.core.domain import CertKind
from jpki_va.protos import va_pb2, va_pb2_grpc
from tests.support import ALL_ROLES_VERIFIER, ExtraResponder, Pki, free_port, start_responder


def _start_first(pki: Pki, state: Path, grpc_port: int = 0, http_port: int = 0) -> ExtraResponder:
    return start_responder(
        pki, state, workers=2, insecure_loopback=True, loopback_verifier=ALL_ROLES_VERIFIER,
        listen=f"127.0.0.1:{grpc_port}", http_listen=f"127.0.0.1:{http_port}",
    )  # fmt: skip


def _twin(
    pki: Pki, state: Path, grpc_port: int, http_port: int
) -> subprocess.CompletedProcess[str]:
    """`jpki-va responder` from another state directory on the given ports."""
    return subprocess.run(
        [
            sys.executable, "-c", "from jpki_va.server.cmd.main import main; main()", "responder",
            "--snapshots", str(pki.signer.config.snapshot_dir), "--state-dir", str(state),
            "--trust-anchor", str(pki.root_file), "--workers", "2", "--insecure-loopback",
            "--loopback-verifier", ALL_ROLES_VERIFIER, "--poll-interval", "0.1",
            "--listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}",
        ],
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _all_ok(address: str, serial: int, calls: int = 50) -> None:
    """`calls` Check calls, each on a fresh connection (spread over the port's sockets)."""
    request = va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=va_pb2.CERT_KIND_CARD_AUTH, serial=serial.to_bytes(8, "big")
            )
        )
    )
    for _ in range(calls):
        with grpc.insecure_channel(address) as channel:
            reply = va_pb2_grpc.StatusServiceStub(channel).Check(request, timeout=10)
        assert reply.status.status == va_pb2.CERT_STATUS_GOOD


@pytest.mark.parametrize("shared", ["grpc", "http"])
def test_second_responder_on_a_held_port_refuses_to_start(
    pki: Pki, tmp_path: Path, shared: str
) -> None:
    issued = pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    first = _start_first(pki, tmp_path / "first")
    try:
        assert first.responder.http_port is not None
        _all_ok(first.address, issued.serial, calls=5)
        held = first.responder.port if shared == "grpc" else first.responder.http_port
        grpc_port = held if shared == "grpc" else free_port()
        http_port = held if shared == "http" else free_port()
        twin = _twin(pki, tmp_path / "twin", grpc_port, http_port)
        assert twin.returncode != 0
        assert "Traceback" not in twin.stderr
        lines = [line for line in twin.stderr.splitlines() if f"port {held}" in line]
        assert len(lines) == 1, twin.stderr
        assert "another process" in lines[0]
        assert "listening" not in twin.stdout
        _all_ok(first.address, issued.serial)
    finally:
        first.close()


def test_restart_after_a_clean_stop_on_the_same_ports(pki: Pki, tmp_path: Path) -> None:
    issued = pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    first = _start_first(pki, tmp_path / "state")
    grpc_port, http_port = first.responder.port, first.responder.http_port
    assert http_port is not None
    try:
        _all_ok(first.address, issued.serial, calls=10)
    finally:
        first.close()
    again = _start_first(pki, tmp_path / "state", grpc_port, http_port)
    try:
        assert (again.responder.port, again.responder.http_port) == (grpc_port, http_port)
        _all_ok(again.address, issued.serial, calls=10)
    finally:
        again.close()
