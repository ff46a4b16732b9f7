"""Plaintext loopback (demos, tests): the named verifier's roles still decide."""

from __future__ import annotations

import subprocess

from cryptography.hazmat.primitives import serialization

from jpki_va.core.domain import CertKind, Role
from jpki_va.protos import verifiers_pb2
from tests.support import JPKI_VA, REPO, Pki, throwaway_certificate


def test_check_command_acts_as_the_named_verifier(pki: Pki) -> None:
    pki.signer_stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id="lo-auth",
            roles=[int(Role.AUTH_VERIFIER)],  # type: ignore[list-item]
            client_certificate_der=[
                throwaway_certificate("lo-auth").public_bytes(serialization.Encoding.DER)
            ],
        ),
        timeout=30,
    )
    signing, auth = pki.issue(CertKind.CARD_SIGN), pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()

    def check(issued_kind: str, serial: int, *who: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*JPKI_VA, "check", "--server", pki.responder_address,
             "--insecure-loopback", *who, "--kind", issued_kind, "--serial", f"{serial:X}"],
            capture_output=True, text=True, cwd=REPO, check=False,
        )  # fmt: skip

    assert check("card-auth", auth.serial, "--verifier", "lo-auth").returncode == 0
    refused = check("card-sign", signing.serial, "--verifier", "lo-auth")
    assert refused.returncode == 3
    assert "PERMISSION_DENIED" in refused.stderr and "SIGNING_VERIFIER" in refused.stderr
    stranger = check("card-auth", auth.serial, "--verifier", "nobody")
    assert stranger.returncode == 3 and "not a registered verifier" in stranger.stderr
    # Without --verifier: the responder's --loopback-verifier (all roles in tests).
    assert check("card-sign", signing.serial).returncode == 0
