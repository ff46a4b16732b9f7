"""Five distributions, one namespace: each package shipped once, the right dependencies.

Read from the pyprojects the way setuptools reads them (`[tool.setuptools.packages.find]`),
so a new package or a changed `include` is checked without a list to keep up to date.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import find_namespace_packages

from tests.support import REPO

#: Distribution folder -> where its pyproject.toml is (the server's is the root one).
DISTRIBUTIONS = {
    "server": REPO,
    "client": REPO / "client",
    "hsm": REPO / "hsm",
    "bench": REPO / "bench",
    "protos": REPO / "protos",
}


def _pyproject(directory: Path) -> dict[str, Any]:
    return tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))


def _name(requirement: str) -> str:
    """The normalised project name of a requirement, without extras, versions or markers."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _shipped(directory: Path) -> set[str]:
    """The packages the distribution in `directory` builds, as setuptools finds them."""
    find = _pyproject(directory)["tool"]["setuptools"]["packages"]["find"]
    assert find.get("namespaces", True), f"{directory}: jpki_va is a PEP 420 namespace"
    return {
        package
        for where in find.get("where", ["."])
        for package in find_namespace_packages(
            where=str(directory / where),
            include=find.get("include", ["*"]),
            exclude=find.get("exclude", ()),
        )
    }


def test_every_package_is_shipped_by_exactly_one_distribution() -> None:
    shipped = {name: _shipped(directory) for name, directory in DISTRIBUTIONS.items()}
    packages = {
        ".".join(init.parent.relative_to(REPO / folder).parts)
        for folder in DISTRIBUTIONS
        for init in (REPO / folder / "jpki_va").rglob("__init__.py")
    }
    assert "jpki_va.server.cmd" in packages and "jpki_va.core" in packages
    for package in sorted(packages):
        owners = [name for name, found in shipped.items() if package in found]
        assert len(owners) == 1, f"{package} is shipped by {owners or 'no distribution'}"


def test_the_server_leaves_the_bench_to_its_extra() -> None:
    server = _pyproject(REPO)["project"]
    bench = _pyproject(REPO / "bench")["project"]
    assert not any(p.startswith("jpki_va.bench") for p in _shipped(REPO))
    # The bench distribution and what it alone brings (numpy, matplotlib); it depends on
    # the server, not the other way round.
    bench_only = {_name(bench["name"])} | {_name(r) for r in bench["dependencies"]}
    bench_only.discard(_name(server["name"]))
    assert bench_only >= {"jpki-va-bench", "numpy", "matplotlib"}
    assert not bench_only & {_name(r) for r in server["dependencies"]}
    assert [_name(r) for r in server["optional-dependencies"]["bench"]] == ["jpki-va-bench"]


def test_the_client_depends_on_the_protos_grpc_and_cryptography_only() -> None:
    client = _pyproject(REPO / "client")["project"]
    assert client["name"] == "jpki-va-client"
    assert {_name(r) for r in client["dependencies"]} == {
        "jpki-va-protos",
        "grpcio",
        "protobuf",
        "cryptography",
    }


def test_the_command_starts_without_the_bench_extra() -> None:
    # numpy and matplotlib are the optional bench extra; blocking them must not stop
    # `jpki-va` or the responder from starting.
    code = (
        "import sys; sys.modules['numpy'] = None; sys.modules['matplotlib'] = None; "
        "import jpki_va.server.cmd.main, jpki_va.server.app.responder_app, "
        "jpki_va.server.app.signer_app; "
        "jpki_va.server.cmd.main.build_parser()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
