"""A publish killed midway leaves its temporary snapshot directory; the next signer on
the data directory removes it at start, and only a signer holding the data directory
does: a second one is refused before it touches anything (issue 15, item 12).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from jpki_va.hsm import HsmConfig
from jpki_va.server.app.signer_app import SignerApp
from jpki_va.server.snapshot.writer import SnapshotBuilder
from tests.support import JPKI_VA, start_loopback_signer, wait_for


def _start(data_dir: Path, token: HsmConfig) -> SignerApp:
    return start_loopback_signer(data_dir, token, delta_interval=0, bootstrap=True)


def _killed_publish(snapshot_dir: Path, sequence: int) -> Path:
    """What a publish killed before its rename leaves: the builder's directory with some
    of the files and no manifest (made by the writer itself, so the name is real)."""
    before = set(snapshot_dir.iterdir())
    SnapshotBuilder(snapshot_dir, sequence).add_verifiers([])
    (left,) = set(snapshot_dir.iterdir()) - before
    assert left.name.startswith(f".tmp-{sequence}-")
    return left


def test_a_publish_left_by_a_killed_signer_is_removed_at_start(
    softhsm_token: HsmConfig, tmp_path: Path
) -> None:
    data = tmp_path / "signer"
    app = _start(data, softhsm_token)
    try:
        published = app.signer.publish(full=True)
    finally:
        app.stop()
    snapshots = app.config.snapshot_dir
    left = _killed_publish(snapshots, published.sequence + 1)
    kept = snapshots / ".tmp-operator"  # not of the writer's making
    kept.mkdir()

    again = _start(data, softhsm_token)
    try:
        assert not left.exists()
        assert kept.is_dir()
        assert published.path.is_dir()
        assert again.signer.publish(full=True).sequence == published.sequence + 1
    finally:
        again.stop()


def test_a_second_signer_on_the_data_directory_is_refused_and_removes_nothing(
    softhsm_token: HsmConfig, tmp_path: Path
) -> None:
    data = tmp_path / "signer"
    app = _start(data, softhsm_token)
    out = tmp_path / "twin.log"
    try:
        in_progress = _killed_publish(app.config.snapshot_dir, 1)  # could be this one's
        assert softhsm_token.pin.file is not None and softhsm_token.softhsm2_conf is not None
        with out.open("wb") as log:
            twin = subprocess.Popen(
                [
                    *JPKI_VA, "signer", "--data-dir", str(data), "--listen", "127.0.0.1:0",
                    "--insecure-loopback", "--delta-interval", "0",
                    "--hsm-token", softhsm_token.token_label,
                    "--hsm-pin-file", softhsm_token.pin.file,
                    "--softhsm2-conf", softhsm_token.softhsm2_conf,
                ],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for(
                lambda: twin.poll() is not None or "listening" in out.read_text(),
                "the second signer to exit or serve",
                timeout=60,
            )
        finally:
            if twin.poll() is None:
                twin.kill()  # it started: the assertions below say so
                twin.wait(30)
        text = out.read_text()
        assert "listening" not in text, text
        assert twin.returncode == 2, text
        assert "Traceback" not in text
        lines = text.strip().splitlines()
        assert len(lines) == 1, text
        assert f"{data} is in use by another live signer (pid {os.getpid()})" in lines[0]
        assert in_progress.is_dir()
    finally:
        app.stop()
