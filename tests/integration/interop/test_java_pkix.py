"""Java's PKIX validator (the JDK's CertPathBuilder and CertPathValidator with a
PKIXRevocationChecker, revocation required for every certificate of the path) judges
the demo certificates, fetching everything from the responder's HTTP server."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.interop.conftest import Demo, write_pem
from tests.support import Pki

_SOURCE = Path(__file__).with_name("java") / "Validate.java"


@pytest.fixture(scope="module")
def validate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Validate.java compiled by the JDK that runs it."""
    for tool in ("java", "javac"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: ./tasks installs default-jdk-headless")
    out = tmp_path_factory.mktemp("java")
    subprocess.run(["javac", "-d", str(out), str(_SOURCE)], check=True, timeout=120)
    return out


def _judge(classes: Path, mode: str, root: Path, *certs: Path) -> dict[str, str]:
    result = subprocess.run(
        [
            "java",
            "-Dcom.sun.security.enableCRLDP=true",
            "-Dcom.sun.security.enableAIAcaIssuers=true",
            "-cp",
            str(classes),
            "Validate",
            mode,
            str(root),
            *map(str, certs),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    return {Path(k).stem: v for k, v in lines.items()}


@pytest.mark.parametrize("mode", ["ocsp", "crl"])
def test_java_pkix_judges_good_revoked_and_cascaded(
    linked_pki: Pki, demo: Demo, validate: Path, tmp_path: Path, mode: str
) -> None:
    names = {"good": demo.good, "revoked": demo.revoked, "cascaded": demo.cascaded}
    if mode == "ocsp":
        # The JDK reads no delta CRLs; OCSP knows a loss as soon as its delta is live.
        names["revoked_in_delta"] = demo.revoked_in_delta
    files = [write_pem(tmp_path, n, i.certificate) for n, i in names.items()]
    got = _judge(validate, mode, linked_pki.root_file, *files)
    # A path of two: the issuing CA came from the certificate's AIA caIssuers URL.
    assert got["good"] == "VALID 2", got
    # Who said so: the delegated OCSP responder, or the issuing CA's CRL (whose entries
    # carry the reason code and the loss cause under our arc).
    sign_ca = "OCSP Responder" if mode == "ocsp" else "CARD_SIGN CA"
    mobile_ca = "OCSP Responder" if mode == "ocsp" else "MOBILE_SIGN CA"
    assert re.fullmatch(
        rf"REJECTED REVOKED 0 .*reason: KEY_COMPROMISE, .*authority: CN=JPKI-VA {sign_ca}.*",
        got["revoked"],
    ), got
    assert re.fullmatch(
        rf"REJECTED REVOKED 0 .*reason: CESSATION_OF_OPERATION, .*"
        rf"authority: CN=JPKI-VA {mobile_ca}.*",
        got["cascaded"],
    ), got
    if mode == "ocsp":
        assert re.fullmatch(
            r"REJECTED REVOKED 0 .*KEY_COMPROMISE, .*authority: CN=JPKI-VA OCSP Responder.*",
            got["revoked_in_delta"],
        ), got
