"""The protos pass buf's lint (STANDARD and COMMENTS) and break nothing of the last main.

buf.yaml at the root of the repository is the module's configuration; its lint
exceptions are checked here to be exactly the ones it documents, so a new element that
breaks a rule in an excepted file still fails. The breaking-change check compares the
protos with those of the previous commit of main, read from git: a clone without that
history fails here rather than passing unchecked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

# The exceptions buf.yaml writes down (rule -> the names buf's messages quote first).
DOCUMENTED_EXCEPTIONS = {
    "PACKAGE_DIRECTORY_MATCH": ["jpki.va.v1"] * 6,
    "RPC_REQUEST_STANDARD_NAME": ["CheckBatchRequest"],
    "RPC_RESPONSE_STANDARD_NAME": ["CheckBatchResponse", "CrlChunk"],
    # Once for each of the two RPCs that share the messages.
    "RPC_REQUEST_RESPONSE_UNIQUE": ["jpki.va.v1.ListIssuersRequest"] * 2
    + ["jpki.va.v1.ListIssuersResponse"] * 2,
}


def buf() -> str:
    found = shutil.which("buf") or shutil.which("buf", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("buf not found: ./tasks setup installs it (buf-bin, dev extra)")
    return found


def run_buf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [buf(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def violations(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_lint_is_clean() -> None:
    result = run_buf("lint", "--error-format", "json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_exceptions_are_exactly_the_documented_ones(tmp_path: Path) -> None:
    # The same rules without buf.yaml's ignore_only: what is left is what it excepts.
    config = json.dumps({"version": "v2", "lint": {"use": ["STANDARD", "COMMENTS"]}})
    result = run_buf("lint", "--error-format", "json", "--config", config, cwd=REPO / "protos")
    assert result.returncode == 100, result.stdout + result.stderr  # 100: violations found
    found: dict[str, list[str]] = {}
    for violation in violations(result.stdout):
        names = re.findall(r'"([^"]+)"', str(violation["message"]))
        found.setdefault(str(violation["type"]), []).append(names[0] if names else "")
    assert {rule: sorted(names) for rule, names in found.items()} == {
        rule: sorted(names) for rule, names in DOCUMENTED_EXCEPTIONS.items()
    }
