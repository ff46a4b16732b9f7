"""Whatever the umask, the roles create their files for their own user only (issue 15,
item 10): the registry (resident codes), the snapshots (signing records: name, address,
birth date, sex), the ledgers, the index and the responder's keys.

The signer and the responder run here under umask 0, the most permissive there is;
every file and directory they created under their data, state and snapshot
directories must then have no group or other permission bit. There is no exception:
nothing the roles keep on disk is meant for another user (public CRLs leave through
the responder's HTTP and gRPC, never as files). Symbolic links are skipped: Linux
ignores their own mode.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jpki_va.core.domain import CertKind
from jpki_va.hsm import HsmConfig
from jpki_va.protos import va_pb2
from tests.support import JPKI_VA, REPO, Pki, free_port, free_port_pair, start_pki, wait_for


def _open_to_others(root: Path) -> list[str]:
    """Every path under root (root included) that a group or other bit opens, with its mode."""
    found = []
    paths = [root]
    for directory, subdirs, files in os.walk(root):
        paths.extend(Path(directory, name) for name in (*subdirs, *files))
    for path in paths:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{stat.filemode(mode)} {path.relative_to(root.parent)}")
    return found


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    # Process-wide: the signer runs in this process and the responder's workers are
    # spawned from it, so they inherit it too.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def roles_under_umask_0(
    permissive_umask: None, tmp_path: Path, softhsm_token: HsmConfig
) -> Iterator[Pki]:
    running = start_pki(tmp_path / "roles", softhsm_token)
    try:
        yield running
    finally:
        running.close()


def test_signer_and_responder_create_nothing_others_can_open(
    roles_under_umask_0: Pki,
) -> None:
    pki = roles_under_umask_0
    signed = pki.issue(CertKind.CARD_SIGN)  # a signing record: the holder's four facts
    pki.publish_and_wait(full=True)
    pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait(full=False)
    # A provision: the worker's ledger shard is written before the answer leaves.
    assert pki.check(CertKind.CARD_SIGN, signed.serial).status == va_pb2.CERT_STATUS_GOOD
    signer_dir = pki.signer.config.data_dir
    state_dir = pki.responder.config.state_dir
    # What the test is about must exist, or the walk below proves nothing.
    assert any((signer_dir / "registry").glob("*.mdb"))
    assert any(pki.signer.config.snapshot_dir.glob("snap-*/signing_records.jsonl"))
    assert any((signer_dir / "ceremonies").glob("*.json"))
    assert any((state_dir / "index").glob("idx-*/data.mdb"))
    assert any((state_dir / "ledger").glob("worker-*/data.mdb"))
    assert any((state_dir / "ledger").glob("worker-*/counts.cells"))
    assert any((state_dir / "ocsp" / "keys").glob("*.pem"))
    assert any((state_dir / "crls").glob("*.mdb"))
    assert any((state_dir / "metrics").iterdir())
    opened = _open_to_others(signer_dir) + _open_to_others(state_dir)
    assert not opened, "open to others:\n" + "\n".join(opened)


def test_the_demo_creates_nothing_others_can_open(tmp_path: Path) -> None:
    """The demo's directory: the token and its PINs, holders' keys, signer and responder."""
    directory = tmp_path / "demo"
    proc = subprocess.Popen(
        [*JPKI_VA, "demo", "--data-dir", str(directory), "--port", str(free_port_pair()),
         "--http-port", str(free_port())],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, umask=0,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: (directory / "demo.json").exists() or proc.poll() is not None,
            "the demo to start",
            timeout=120,
        )
        assert proc.poll() is None, proc.communicate()[0]
        assert any(directory.glob("hsm/tokens/*/*"))  # SoftHSM2's own token files too
        assert any(directory.glob("certs/*.key.pem"))
        assert any(directory.glob("signer/snapshots/snap-*/signing_records.jsonl"))
        assert any(directory.glob("responder/index/idx-*/data.mdb"))
        opened = _open_to_others(directory)
        assert not opened, "open to others:\n" + "\n".join(opened)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
