"""The responder killed (SIGKILL) at every step of an ingest, then restarted (issue 15, item 14).

At each fault point of a full build and of a delta's apply, the supervisor dies as a
crash leaves it. Its workers must die with it (they would otherwise serve an index
nobody keeps fresh), the port must be free, and a restart on the same state directory
must serve every loss the signer acknowledged, with no half-built index left behind.
"""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from jpki_va.core.domain import CertKind
from jpki_va.protos import signer_pb2, va_pb2, va_pb2_grpc
from jpki_va.server.base.faults import POINTS
from tests.support import ALL_ROLES_VERIFIER, Pki, wait_for
from tests.support.processes import ResponderProcess, alive, start_responder_process

RESPONDER_POINTS = [p for p in POINTS if p.startswith("index.")]


def _status(address: str, serial: int) -> va_pb2.CertificateStatus | None:
    request = va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=va_pb2.CERT_KIND_CARD_AUTH, serial=serial.to_bytes(8, "big")
            )
        )
    )
    try:
        with grpc.insecure_channel(address) as channel:
            return va_pb2_grpc.StatusServiceStub(channel).Check(request, timeout=5).status
    except grpc.RpcError:
        return None


def _wait_status(address: str, serial: int, status: int, sequence: int = 0) -> None:
    def answered() -> bool:
        got = _status(address, serial)
        return got is not None and got.status == status and got.index_sequence >= sequence

    wait_for(answered, f"serial {serial:X} answered {status} from {address}")


@pytest.mark.slow
@pytest.mark.parametrize("point", RESPONDER_POINTS)
def test_responder_killed_while_ingesting_recovers_and_leaves_no_orphan(
    pki: Pki, tmp_path: Path, point: str
) -> None:
    lost = pki.issue(CertKind.CARD_AUTH)
    kept = pki.issue(CertKind.CARD_AUTH)
    first = pki.publish_and_wait()
    snapshots = pki.signer.config.snapshot_dir
    state = tmp_path / "state"
    delta = point == "index.delta.applied"
    # The first full build passes each build point once; the kill is at the next ingest.
    armed = f"{point}@1" if delta else f"{point}@2"
    responder: ResponderProcess = start_responder_process(
        snapshots, state, pki.root_file, ALL_ROLES_VERIFIER, faults=armed
    )
    try:
        _wait_status(responder.address, kept.serial, va_pb2.CERT_STATUS_GOOD, first)
        workers = wait_for(lambda: responder.children() or None, "the responder's workers")
        assert len(workers) >= 2
        pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=va_pb2.CERT_KIND_CARD_AUTH,
                serial=lost.serial.to_bytes(8, "big"),
                cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            ),
            timeout=30,
        )
        pki.publish_and_wait(full=not delta)
        assert responder.role.wait_exit() == -signal.SIGKILL, responder.role.text
        assert f"fault point {point}" in responder.role.text
    finally:
        responder.role.stop()
    # Nothing of it lives on: no worker answers from the index it held.
    wait_for(lambda: not any(alive(pid) for pid in workers), "the workers to die", 15)
    assert _status(responder.address, kept.serial) is None

    restarted = start_responder_process(
        snapshots, state, pki.root_file, ALL_ROLES_VERIFIER, port=responder.port
    )
    try:
        _wait_status(restarted.address, lost.serial, va_pb2.CERT_STATUS_REVOKED)
        assert (got := _status(restarted.address, kept.serial)) is not None
        assert got.status == va_pb2.CERT_STATUS_GOOD
        leftovers = sorted(p.name for p in (state / "index").glob(".build-*"))
        assert leftovers == [], leftovers
    finally:
        restarted.role.stop()
    assert restarted.role.process.returncode == 0, restarted.role.text
