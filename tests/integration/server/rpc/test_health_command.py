"""`jpki-va health` against a real responder and signer on plaintext loopback."""

from __future__ import annotations

import subprocess

from tests.support import JPKI_VA, Pki, free_port


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JPKI_VA, "health", "--insecure-loopback", "--timeout", "3s", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_health_of_each_role_and_part(pki: Pki) -> None:
    # This module's responder has no index yet: not ready, NOT_SERVING, exit 1.
    first = health("--server", pki.responder_address)
    assert first.returncode == 1, first.stderr
    assert first.stdout.strip().endswith("(server): NOT_SERVING")
    pki.publish_and_wait()
    for address, part in (
        (pki.responder_address, "jpki-va.ingest"),
        (f"127.0.0.1:{pki.signer.port}", "jpki-va.publish"),
    ):
        for service in ("", part, "jpki.va.v1.StatusService"):
            result = health("--server", address, "--service", service)
            if service == "jpki.va.v1.StatusService" and address != pki.responder_address:
                assert result.returncode == 1  # the signer does not serve status
                continue
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip().endswith(": SERVING")


def test_no_answer_is_exit_4_in_one_line() -> None:
    result = health("--server", f"127.0.0.1:{free_port()}")
    assert result.returncode == 4
    assert result.stderr.startswith("jpki-va health: error: 127.0.0.1:")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
