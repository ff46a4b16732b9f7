"""`jpki-va responder` with stream and connection options it cannot honour: one line, exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support import JPKI_VA, throwaway_certificate


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-streams-per-caller", "0"], "max streams per caller must be 1 to 32"),
        (["--max-streams", "4", "--max-streams-per-caller", "2"], "max watches must be 1 to 4"),
        (["--stream-idle", "soon"], "stream idle: expected a duration"),
        (["--stream-idle", "0.5s"], "stream idle time must be at least 1 second"),
        (["--http-max-connections", "0"], "http max connections must be >= 1"),
        # Past any open files limit: refused before the responder holds anything.
        (["--grpc-max-connections", str(1 << 40)], "open files limit"),
        # Plaintext HTTP and metrics stay on loopback; TLS needs the role's files.
        (
            ["--http-listen", "0.0.0.0:8080"],
            "responder HTTP listen: plaintext is allowed only on loopback, not '0.0.0.0:8080'; "
            "add --http-tls",
        ),
        (
            ["--metrics-listen", "[::]:9100"],
            "metrics listen: plaintext is allowed only on loopback",
        ),
        (["--http-tls"], "--http-tls needs the role's --tls-cert, --tls-key and --client-ca"),
        (["--metrics-port", "0", "--metrics-listen", "127.0.0.1:0"], "not both"),
    ],
)
def test_bad_stream_and_connection_options(
    tmp_path: Path, options: list[str], message: str
) -> None:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(throwaway_certificate("root").public_bytes(serialization.Encoding.PEM))
    (tmp_path / "snapshots").mkdir()
    result = subprocess.run(
        [
            *JPKI_VA,
            "responder",
            "--snapshots", str(tmp_path / "snapshots"),
            "--state-dir", str(tmp_path / "state"),
            "--trust-anchor", str(anchor),
            "--listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--insecure-loopback",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.startswith("jpki-va responder: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
