"""The container images, kept honest without a container engine.

The Dockerfile is parsed into its stages. The build stage's steps are replayed as
written: its COPY sources copied from the repository into a scratch context, its RUN
steps run there with the image's venv path pointed at a fresh one. What that venv
holds is what an image would: the roles' entry points start (`--help`), the
responder's and signer's code imports, and the bench (numpy, matplotlib) is absent.
Each role's stage is checked for a non-root user, declared volumes and ports, a
HEALTHCHECK through gRPC health, and the PKCS#11 module in the signer's alone.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jpki_va.hsm import DEFAULT_MODULE
from tests.support import REPO

DOCKERFILE = REPO / "Dockerfile"
VENV_IN_IMAGE = "/opt/jpki-va/venv"
ROLES = {"responder": "50051", "signer": "50052"}


@dataclass
class Stage:
    name: str
    base: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.steps if i == instruction]


def parse(text: str) -> dict[str, Stage]:
    """Stages by name: line continuations joined, comments dropped."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    logical = ""
    for line in text.splitlines():
        if not logical and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        instruction, _, arguments = logical.strip().partition(" ")
        logical = ""
        if not instruction:
            continue
        if instruction.upper() == "FROM":
            words = arguments.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: {arguments}"
            current = stages[words[2]] = Stage(words[2], words[0])
            continue
        assert current is not None, f"{instruction} before FROM"
        current.steps.append((instruction.upper(), arguments.strip()))
    return stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    out = [stages[name]]
    while out[0].base in stages:
        out.insert(0, stages[out[0].base])
    return out


def apt_packages(stages: list[Stage]) -> set[str]:
    installed: set[str] = set()
    for stage in stages:
        for command in stage.args("RUN"):
            for part in command.split("&&"):
                words = shlex.split(part)
                if words[:2] == ["apt-get", "install"]:
                    installed.update(w for w in words[2:] if not w.startswith("-"))
    return installed


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def venv(stages: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build stage replayed: its COPY steps, then its RUN steps, into a fresh venv."""
    build = stages["build"]
    base = tmp_path_factory.mktemp("image")
    context = base / "src"
    context.mkdir()
    venv = base / "venv"
    for arguments in build.args("COPY"):
        *sources, destination = arguments.split()
        for source in sources:
            origin = REPO / source
            target = context / destination / (source if destination.endswith("/") else "")
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    target,
                    ignore=shutil.ignore_patterns(
                        "__pycache__",
                        "*.egg-info",
                        "build",
                        "_batch_wire.c",
                        "_counter_cells.c",
                        "_ocsp_miss.c",
                        "_lmdb_pages.c",
                        "*.so",
                    ),
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target)
    for command in build.args("RUN"):
        # The image's python is the same minor version; the wheel cache only saves downloads.
        replayed = (
            command.replace(VENV_IN_IMAGE, str(venv))
            .replace("python -m venv", f"{sys.executable} -m venv")
            .replace(" --no-cache-dir", "")
        )
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", replayed],
            cwd=context,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return venv


def _run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=venv,
    )


def test_the_image_venv_starts_every_role(venv: Path, stages: dict[str, Stage]) -> None:
    for role in ROLES:
        entry = json.loads(stages[role].args("ENTRYPOINT")[-1])
        command = json.loads(stages[role].args("CMD")[-1])
        assert entry == ["jpki-va", role] and command[0] == "--config"
        started = _run(venv, *entry, "--help")
        assert started.returncode == 0, started.stderr
        assert "--config" in started.stdout
    probe = _run(venv, "jpki-va", "health", "--help")
    assert probe.returncode == 0 and "SERVING" in probe.stdout
    # Their code and native libraries import (lmdb, httptools, python-pkcs11, grpc).
    imported = _run(
        venv,
        "python",
        "-c",
        "import jpki_va.server.app.responder_app, jpki_va.server.app.signer_app, pkcs11",
    )
    assert imported.returncode == 0, imported.stderr
    # The build stage compiled the hot paths' twins (a fallback would pass unseen).
    compiled = _run(
        venv,
        "python",
        "-c",
        "import jpki_va.server.rpc._batch_wire, jpki_va.server.ledger._counter_cells,"
        " jpki_va.server.responder._ocsp_miss, jpki_va.server.responder._lmdb_pages",
    )
    assert compiled.returncode == 0, compiled.stderr


def test_the_image_has_no_bench(venv: Path) -> None:
    listed = _run(venv, "python", "-m", "pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"jpki-va", "jpki-va-protos", "jpki-va-client", "jpki-va-hsm"} <= names
    assert not names & {"jpki-va-bench", "numpy", "matplotlib"}
    missing = _run(venv, "python", "-c", "import jpki_va.bench")
    assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr


@pytest.mark.parametrize("role", list(ROLES))
def test_each_role_stage_is_declared_as_a_pod_needs(stages: dict[str, Stage], role: str) -> None:
    stage = stages[role]
    assert stage.base == "base"
    assert f"--from=build {VENV_IN_IMAGE} {VENV_IN_IMAGE}" in stage.args("COPY")
    user = stage.args("USER")[-1]
    assert user not in ("0", "root") and user.isdigit()  # numeric: runAsNonRoot can check it
    assert "useradd --system --uid " + user in " ".join(stages["base"].args("RUN"))
    volumes = [v for arguments in stage.args("VOLUME") for v in json.loads(arguments)]
    assert volumes and all(v.startswith("/var/lib/jpki-va/") for v in volumes)
    ports = " ".join(stage.args("EXPOSE")).split()
    assert ROLES[role] in ports and "9100" in ports
    healthcheck = stage.args("HEALTHCHECK")[-1]
    probe = json.loads(healthcheck.split("CMD", 1)[1])
    assert probe == ["jpki-va", "health", "--server", f"127.0.0.1:{ROLES[role]}"]
    assert "--start-period=" in healthcheck


def test_only_the_signer_image_has_a_pkcs11_module(stages: dict[str, Stage]) -> None:
    signer, responder = (
        apt_packages(chain(stages, "signer")),
        apt_packages(chain(stages, "responder")),
    )
    assert "softhsm2" in signer
    assert not responder & {"softhsm2", "opensc", "libsofthsm2"}
    # The package the signer installs carries the module the configuration defaults to.
    listed = subprocess.run(
        ["dpkg", "-L", "softhsm2", "libsofthsm2"], capture_output=True, text=True, check=False
    )
    assert DEFAULT_MODULE in listed.stdout.split()


def test_the_build_context_leaves_out_what_images_do_not_need() -> None:
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "bench", "tests"} <= set(ignored)
