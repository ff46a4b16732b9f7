"""A killed responder supervisor takes its workers along; a restart starts clean
(issue 15, item 2).

SIGKILL leaves the supervisor no chance to stop its workers. Before, they kept serving
the index of that moment, health SERVING, with nobody ingesting: a loss recorded
afterwards was answered GOOD for as long as they lived, and they held the port and
their ledger shards, so a restart was refused until someone killed them by hand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jpki_va.core.domain import CertKind
from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.responder.index_layout import index_dirname
from jpki_va.server.responder.index_reader import current_index
from jpki_va.server.rpc.server_common import SERVED_BY
from tests.support import (
    ALL_ROLES_VERIFIER,
    JPKI_VA,
    Issued,
    Pki,
    free_port,
    start_responder,
    wait_for,
)


def _responder_argv(pki: Pki, state: Path, grpc_port: int, http_port: int) -> list[str]:
    return [
        *JPKI_VA, "responder",
        "--snapshots", str(pki.signer.config.snapshot_dir), "--state-dir", str(state),
        "--trust-anchor", str(pki.root_file), "--workers", "2", "--insecure-loopback",
        "--loopback-verifier", ALL_ROLES_VERIFIER, "--poll-interval", "0.1",
        "--listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}",
    ]  # fmt: skip


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie: a zombie holds no socket, lock or file any more."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _check(address: str, issued: Issued) -> tuple[int, va_pb2.CheckResponse]:
    """One Check on a fresh connection (SO_REUSEPORT spreads connections over workers)."""
    request = va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=int(issued.kind),  # type: ignore[arg-type]
                serial=issued.serial.to_bytes(8, "big"),
            )
        )
    )
    with grpc.insecure_channel(address) as channel:
        reply, call = va_pb2_grpc.StatusServiceStub(channel).Check.with_call(request, timeout=10)
    return int(dict(call.trailing_metadata() or ())[SERVED_BY]), reply


def _workers_answering(address: str, issued: Issued, count: int) -> set[int]:
    """The pids of `count` distinct workers, each having answered GOOD."""
    seen: set[int] = set()

    def enough() -> bool:
        with contextlib.suppress(grpc.RpcError):
            worker, reply = _check(address, issued)
            assert reply.status.status == va_pb2.CERT_STATUS_GOOD
            seen.add(worker)
        return len(seen) >= count

    wait_for(enough, f"{count} workers to answer", timeout=90)
    return seen


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever is still alive at its end is killed, by pid."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_killed_supervisor_takes_its_workers_along_and_a_restart_serves(
    pki: Pki, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    issued = pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    state = tmp_path / "state"
    grpc_port, http_port = free_port(), free_port()
    address = f"127.0.0.1:{grpc_port}"
    argv = _responder_argv(pki, state, grpc_port, http_port)
    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    started.append(first)
    orphans: set[int] = set()
    try:
        workers = _workers_answering(address, issued, 2)
        children = _children(first.pid)
        assert workers <= children  # spawned by this supervisor (and its resource tracker)
        orphans = set(children)

        first.send_signal(signal.SIGKILL)
        first.wait(30)

        wait_for(
            lambda: not any(_alive(pid) for pid in children),
            f"the killed supervisor's processes {sorted(children)} to end",
            timeout=15,
        )
        orphans = set()
        assert _refused(grpc_port)
        assert _refused(http_port)
    finally:
        for pid in orphans:  # only when the assertion above failed: end them by pid
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    # The same state directory and ports: nothing left holds them.
    with (tmp_path / "again.log").open("wb") as log:
        again = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    started.append(again)
    assert not _workers_answering(address, issued, 2) & workers
    assert again.poll() is None
    again.send_signal(signal.SIGTERM)
    assert again.wait(60) == 0
    assert "Traceback" not in (tmp_path / "again.log").read_text()


def _plant_killed_build(index_root: Path, sequence: int) -> list[str]:
    """What a build of `sequence` killed just before its rename leaves (a complete
    environment under the build's name), and a publish killed before its pointer flip
    (the new link). Their names."""
    live = current_index(index_root)
    assert live is not None
    build = index_root / f".build-{index_dirname(sequence)}"
    shutil.copytree(live, build)
    link = index_root / ".current.999999"
    link.symlink_to(build.name)
    return [build.name, link.name]


def test_a_build_left_by_a_killed_supervisor_is_removed_at_start(
    pki: Pki, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """Only by the supervisor that holds the state directory: a second one, refused,
    removes nothing (the first could be building)."""
    issued = pki.issue(CertKind.CARD_AUTH)
    sequence = pki.publish_and_wait()
    state = tmp_path / "state"
    settings = {"insecure_loopback": True, "loopback_verifier": ALL_ROLES_VERIFIER}
    first = start_responder(pki, state, **settings)
    try:
        _workers_answering(first.address, issued, 1)
    finally:
        first.close()
    index_root = state / "index"
    leftovers = _plant_killed_build(index_root, sequence + 1)
    ours = index_root / "operator-notes"  # not of the index build's making
    ours.write_text("kept\n")

    again = start_responder(pki, state, **settings)
    try:
        assert [p.name for p in index_root.iterdir() if p.name in leftovers] == []
        assert ours.read_text() == "kept\n"
        _workers_answering(again.address, issued, 1)

        # A twin on the same state directory is refused with one line before it
        # touches anything; what could be the first one's build stays.
        planted = _plant_killed_build(index_root, sequence + 2)
        twin = subprocess.run(
            _responder_argv(pki, state, free_port(), free_port()),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert twin.returncode == 2, twin.stderr
        assert "Traceback" not in twin.stderr
        lines = twin.stderr.strip().splitlines()
        assert len(lines) == 1, twin.stderr
        assert f"{state} is in use by another live responder (pid {os.getpid()})" in lines[0]
        assert all((index_root / name).exists() or (index_root / name).is_symlink()
                   for name in planted)  # fmt: skip
        _workers_answering(again.address, issued, 1)
    finally:
        again.close()
