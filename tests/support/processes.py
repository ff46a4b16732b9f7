"""Roles run as their own processes, for the tests that kill them (the fault suite).

An in-process signer or responder cannot be SIGKILLed without killing pytest; these
start `jpki-va signer` as the command line does, with an environment of the test's
choosing (``JPKI_VA_FAULT_POINTS``), and report how the process ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2_grpc
from jpki_va.server.base.faults import ENV as FAULT_ENV
from tests.support import JPKI_VA, free_port, wait_for


@dataclass
class RoleProcess:
    """A role's process, its output collected in the background."""

    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.output.append(line)

    @property
    def text(self) -> str:
        return "".join(self.output)

    def wait_output(self, needle: str, timeout: float = 60.0) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and needle not in self.text:
                raise AssertionError(f"the role ended ({self.process.returncode}):\n{self.text}")
            return needle in self.text

        wait_for(seen, f"{needle!r} from the role", timeout)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start_role(
    argv: list[str],
    faults: str = "",
    env: dict[str, str] | None = None,
    *,
    background: bool = False,
) -> RoleProcess:
    """`jpki-va ARGV` with this environment plus `env`, and the fault points armed.

    ``background``: started as a shell starts a background job, SIGINT ignored.
    """
    env = {**os.environ, **(env or {})}
    env.pop(FAULT_ENV, None)
    if faults:
        env[FAULT_ENV] = faults
    # A shell's background job: SIGINT ignored (trap ""), which exec passes on.
    shell = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"] if background else []
    process = subprocess.Popen(
        [*shell, *JPKI_VA, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    return RoleProcess(process)


@dataclass
class SignerProcess:
    """`jpki-va signer` on 127.0.0.1 with publishing on request only."""

    role: RoleProcess
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @contextmanager
    def stub(self) -> Iterator[signer_pb2_grpc.SignerServiceStub]:
        with grpc.insecure_channel(self.address) as channel:
            yield signer_pb2_grpc.SignerServiceStub(channel)


def start_signer_process(
    data_dir: Path,
    token: HsmConfig,
    faults: str = "",
    *,
    background: bool = False,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> SignerProcess:
    assert token.pin.file is not None and token.softhsm2_conf is not None
    port = free_port()
    argv = [
        "signer", "--data-dir", str(data_dir), "--bootstrap", "--insecure-loopback",
        "--listen", f"127.0.0.1:{port}", "--delta-interval", "0", "--full-interval", "24h",
        "--hsm-module", token.module, "--hsm-token", token.token_label,
        "--hsm-pin-file", token.pin.file, "--softhsm2-conf", token.softhsm2_conf, *extra,
    ]  # fmt: skip
    role = start_role(argv, faults, env, background=background)
    try:
        role.wait_output(f"signer listening on port {port}")
    except BaseException:
        role.stop()
        raise
    return SignerProcess(role, port)


@dataclass
class ResponderProcess:
    """`jpki-va responder` on 127.0.0.1 over a Pki's snapshots."""

    role: RoleProcess
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def children(self) -> list[int]:
        """The process ids whose parent is this responder's supervisor (its workers)."""
        return children_of(self.role.process.pid)


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_responder_process(
    snapshots: Path,
    state: Path,
    root_file: Path,
    verifier: str,
    *,
    port: int = 0,
    workers: int = 2,
    faults: str = "",
    background: bool = False,
    extra: tuple[str, ...] = (),
) -> ResponderProcess:
    port = port or free_port()
    argv = [
        "responder", "--snapshots", str(snapshots), "--state-dir", str(state),
        "--trust-anchor", str(root_file), "--workers", str(workers), "--insecure-loopback",
        "--loopback-verifier", verifier, "--poll-interval", "0.1",
        "--listen", f"127.0.0.1:{port}", *extra,
    ]  # fmt: skip
    role = start_role(argv, faults, background=background)
    try:
        role.wait_output(f"responder listening on port {port}")
    except BaseException:
        role.stop()
        raise
    return ResponderProcess(role, port)
