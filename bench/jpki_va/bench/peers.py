"""Peers loaded with the same HTTP OCSP requests: cfssl ocspserve and `openssl ocsp`.

cfssl serves the pre-signed responses of the data set (peers/responses.b64, its
`ocspdump` format); Debian's cfssl 1.2.0 answers RFC 5019 GETs with 400, so the
load POSTs. `openssl ocsp` signs every answer from peers/index.txt; its `-port`
binds every address, so it runs inside a private network namespace (`unshare -n`,
loopback only) together with wrk, and its `-multi` workers, which can outlive
the parent's SIGTERM, are stopped by their own process ids.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from jpki_va.bench.dataset import DataSet
from jpki_va.bench.httpload import HttpLoadError, HttpSpec, run_wrk
from jpki_va.bench.loadgen import LoadResult


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HttpLoadError(f"peer exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise HttpLoadError(f"peer did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def cfssl(ds: DataSet, spec: HttpSpec) -> LoadResult:
    if shutil.which("cfssl") is None:
        raise HttpLoadError("cfssl is not installed (jpki-va bench setup)")
    port = _free_port()
    proc = subprocess.Popen(
        [
            "cfssl",
            "ocspserve",
            "-address",
            "127.0.0.1",
            "-port",
            str(port),
            "-responses",
            str(ds.peers_dir / "responses.b64"),
            "-loglevel",
            "5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        return run_wrk(
            "cfssl ocspserve",
            f"http://127.0.0.1:{port}/",
            spec,
            ds.peers_dir / "requests.hex",
            server_pids=[proc.pid],
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def openssl_ocsp(ds: DataSet, spec: HttpSpec, multi: int = 2) -> LoadResult:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise HttpLoadError("unshare and ip are needed to run openssl ocsp on loopback only")
    peers = ds.peers_dir
    port = 8888  # inside the private namespace: nothing else listens there
    q = shlex.quote
    setup = f"""
ip link set lo up
log=$(mktemp)
openssl ocsp -index {q(str(peers / "index.txt"))} -CA {q(str(peers / "issuer.pem"))} \\
  -rsigner {q(str(peers / "ocsp-signer.pem"))} -rkey {q(str(peers / "ocsp-signer.key"))} \\
  -port {port} -multi {multi} -nmin 5 -ignore_err >"$log" 2>&1 &
parent=$!
cleanup() {{
  # The parent ignores SIGTERM and its workers outlive it: SIGKILL every one by pid.
  children=$(ps -o pid= --ppid "$parent" || true)
  kill -9 "$parent" $children 2>/dev/null || true
  rm -f "$log"
}}
# Ready when the parent listens and its workers exist; a probe connection before
# that leaves the workers stuck, so none is made.
for _ in $(seq 100); do grep -q ACCEPT "$log" && break; sleep 0.1; done
for _ in $(seq 100); do
  [ "$(ps -o pid= --ppid "$parent" | wc -l)" -ge {multi} ] && break
  sleep 0.1
done
"""
    try:
        return run_wrk(
            f"openssl ocsp -multi {multi}",
            f"http://127.0.0.1:{port}/",
            spec,
            peers / "requests.hex",
            wrap=["unshare", "-n"],
            setup_shell=setup,
        )
    finally:
        _kill_leftovers(str(peers / "index.txt"))


def _kill_leftovers(marker: str) -> list[int]:
    """SIGKILL our own `openssl ocsp` processes still alive (found by their index path)."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"openssl", b"ocsp"] and marker.encode() in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed
