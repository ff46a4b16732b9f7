"""The verifier client is a distribution of its own: jpki-va-protos + jpki-va-client.

A fresh venv gets those two alone (built from the sources, not editable, with the
tested constraints), and must be enough to ask a real responder: no server code, no
lmdb, python-pkcs11 or httptools.

Here and not under tests/integration/client/: that folder's conftest replaces the `pki`
fixture with a fake StatusService, and this test needs the real signer and responder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jpki_va.core.domain import CertKind
from tests.support import REPO, Issued, Pki

pytestmark = pytest.mark.slow

#: What the server needs and a verifier must not get.
SERVER_ONLY = ("lmdb", "pkcs11", "httptools", "jpki_va.server", "jpki_va.hsm")


def _clean_env() -> dict[str, str]:
    """The environment without this venv or PYTHONPATH leaking into the fresh one."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    }


def _run(*argv: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only ./protos and ./client installed; its bin directory."""
    base = tmp_path_factory.mktemp("client-dist")
    # Build copies: a build in the source folders would leave build/ behind there.
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    for folder in ("protos", "client"):
        shutil.copytree(REPO / folder, base / "src" / folder, ignore=ignore)
    venv = base / "venv"
    created = _run(sys.executable, "-m", "venv", venv, cwd=base)
    assert created.returncode == 0, created.stderr
    installed = _run(
        venv / "bin" / "python", "-m", "pip", "install", "--quiet",
        "--disable-pip-version-check", "-c", REPO / "constraints.txt",
        base / "src" / "protos", base / "src" / "client",
        cwd=base, timeout=240,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv / "bin"


def test_the_client_imports_from_its_own_install(client_venv: Path) -> None:
    code = "from jpki_va.client import VaClient; import jpki_va.client as c; print(c.__file__)"
    result = _run(client_venv / "python", "-c", code, cwd=client_venv)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(client_venv.parent), result.stdout


@pytest.mark.parametrize("module", SERVER_ONLY)
def test_the_client_install_has_no_server_library(client_venv: Path, module: str) -> None:
    code = f"""
try:
    import {module}
except ImportError:
    raise SystemExit(0)
raise SystemExit("{module} is importable from " + str({module}.__file__))
"""
    result = _run(client_venv / "python", "-c", code, cwd=client_venv)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def card(pki: Pki) -> Issued:
    issued = pki.issue(CertKind.CARD_AUTH, municipality="131016")
    pki.publish_and_wait()
    return issued


def test_the_client_command_checks_against_a_real_responder(
    client_venv: Path, pki: Pki, card: Issued, tmp_path: Path
) -> None:
    cert, _ = card.pem_files(tmp_path, "card")
    result = _run(
        client_venv / "jpki-va-client", "check", "--cert", cert, "--json",
        "--server", pki.responder_address, "--insecure-loopback",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["status"] == "GOOD", answer
    assert answer["kind"] == "CARD_AUTH"
    assert int(answer["serial"], 16) == card.serial
