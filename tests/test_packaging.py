"""What a plain install (the responder image) gets: every package, no bench extra."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_package_is_in_the_distribution() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("protos", "server", "hsm", "client", "bench")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert listed == found


def test_the_command_starts_without_the_bench_extra() -> None:
    # numpy and matplotlib are the optional bench extra; blocking them must not stop
    # `jpki-va` or the responder from starting.
    code = (
        "import sys; sys.modules['numpy'] = None; sys.modules['matplotlib'] = None; "
        "import server.cli, server.responder_app, server.signer_app; "
        "server.cli.build_parser()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
