"""The responder's index on a full disk (issue 15, item 9).

The index directory is a real 8 MB tmpfs, filled with a file until the next index
cannot be built. On a full disk LMDB fails a commit with EIO (a short write) rather
than ENOSPC, and an environment whose lock file lands on a full tmpfs dies of SIGBUS;
the responder must say "no space left on device", back off, log once, keep serving
the last good index, report it in health and metrics, and recover once space is freed.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jpki_va.core.domain import CertKind
from jpki_va.protos import signer_pb2, va_pb2, va_pb2_grpc
from jpki_va.server.responder.storage import LOCK_FILE_BYTES
from tests.support import ExtraResponder, Pki, start_responder, wait_for

INGEST_HEALTH = "jpki-va.ingest"
POLL = 0.1


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """A responder state directory whose index directory is an 8 MB tmpfs."""
    state = tmp_path / "state"
    index = state / "index"
    index.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(index)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        # Never skipped: the test needs a real small file system (root, or CAP_SYS_ADMIN).
        pytest.fail(f"cannot mount a tmpfs for the index: {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", str(index)], check=True)


def _metric(responder: ExtraResponder, name: str) -> float | None:
    url = f"http://127.0.0.1:{responder.responder.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)", line)
        if match:
            return float(match.group(1))
    return None


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return int(reply.status)


def _served_sequence(address: str) -> int:
    """The sequence of the index that answers (0 while none does)."""
    with grpc.insecure_channel(address) as channel:
        try:
            answer = va_pb2_grpc.StatusServiceStub(channel).Check(
                va_pb2.CheckRequest(
                    cert=va_pb2.CertRef(
                        kind_serial=va_pb2.KindSerial(
                            kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x01"
                        )
                    )
                ),
                timeout=10,
            )
        except grpc.RpcError:
            return 0
    return int(answer.status.index_sequence)


def _fill(directory: Path, leave: int) -> Path:
    """A file that takes all the free space of `directory`'s file system but `leave` bytes."""
    filler = directory / "filler"
    stat = os.statvfs(directory)
    size = stat.f_bavail * stat.f_frsize - leave
    with filler.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)
    return filler


@pytest.mark.parametrize(
    "lock_room",
    [0, LOCK_FILE_BYTES],
    ids=["no-room-for-the-lock-file", "room-for-the-lock-file-only"],
)
def test_a_full_disk_is_named_backed_off_logged_once_and_recovered_from(
    pki: Pki, small_state: Path, caplog: pytest.LogCaptureFixture, lock_room: int
) -> None:
    """Whether the disk fills before LMDB opens the new index (ENOSPC) or while it
    writes it (EIO from a short write, or ENOSPC), the same clear condition."""
    for _ in range(3):
        pki.issue(CertKind.CARD_SIGN)
    first = pki.publish_and_wait()
    responder = start_responder(
        pki,
        small_state,
        insecure_loopback=True,
        poll_interval=POLL,
        metrics_port=0,
        loopback_verifier=pki.responder.config.loopback_verifier,
    )
    caplog.set_level(logging.INFO, logger="jpki_va.server.responder")
    index = small_state / "index"
    filler = None
    try:
        wait_for(lambda: _served_sequence(responder.address) >= first, "the first index")
        # The next index holds at least what this one does: half its size will not do.
        live = max(p.stat().st_size for p in index.glob("idx-*/data.mdb"))
        filler = _fill(index, lock_room + live // 2)
        for _ in range(3):
            pki.issue(CertKind.CARD_SIGN)
        second = pki.signer_stub.PublishSnapshot(
            signer_pb2.PublishSnapshotRequest(full=True), timeout=60
        ).sequence
        pki.wait_sequence(second)  # the other responder, with room, has it

        wait_for(
            lambda: (_metric(responder, "jpki_va_ingest_failures_total") or 0) >= 3,
            "three failed index builds",
        )
        assert _metric(responder, "jpki_va_ingest_no_space") == 1
        # Exponential: each failure doubles the wait before the next attempt.
        failures = _metric(responder, "jpki_va_ingest_consecutive_failures")
        retry = _metric(responder, "jpki_va_ingest_retry_seconds")
        assert failures is not None and retry is not None
        assert retry == pytest.approx(min(60.0, POLL * 2 ** (failures - 1)))
        # The last good index is still served, and the condition is reported.
        assert _served_sequence(responder.address) == first
        assert _health(responder.address, "") == health_pb2.HealthCheckResponse.SERVING
        wait_for(
            lambda: (
                _health(responder.address, INGEST_HEALTH)
                == health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            "the ingest health to say NOT_SERVING",
        )
        said = [r for r in caplog.records if "no space left on device" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert said[0].levelno == logging.ERROR and said[0].exc_info is None
        assert not [r for r in caplog.records if r.exc_info is not None]
        assert not list(index.glob(".build-*"))  # nothing half-built left taking space

        filler.unlink()
        filler = None
        wait_for(lambda: _served_sequence(responder.address) == second, "the index after space")
        assert _metric(responder, "jpki_va_ingest_no_space") == 0
        assert _metric(responder, "jpki_va_ingest_retry_seconds") == 0
        wait_for(
            lambda: (
                _health(responder.address, INGEST_HEALTH) == health_pb2.HealthCheckResponse.SERVING
            ),
            "the ingest health to say SERVING",
        )
        recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
        assert len(recovered) == 1
    finally:
        if filler is not None:
            filler.unlink()
        responder.close()
