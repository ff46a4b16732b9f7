"""The protos pass buf's lint (STANDARD and COMMENTS) and break nothing of the last main.

buf.yaml at the root of the repository is the module's configuration; its lint
exceptions are checked here to be exactly the ones it documents, so a new element that
breaks a rule in an excepted file still fails. The breaking-change check compares the
protos with those of the previous commit of main, read from git: a clone without that
history fails here rather than passing unchecked.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.buf import run_buf

# The exceptions buf.yaml writes down (rule -> the names buf's messages quote first).
DOCUMENTED_EXCEPTIONS = {
    "PACKAGE_DIRECTORY_MATCH": ["jpki.va.v1"] * 6,
    "RPC_REQUEST_STANDARD_NAME": ["CheckBatchRequest"],
    "RPC_RESPONSE_STANDARD_NAME": ["CheckBatchResponse", "CrlChunk"],
    # Once for each of the two RPCs that share the messages.
    "RPC_REQUEST_RESPONSE_UNIQUE": ["jpki.va.v1.ListIssuersRequest"] * 2
    + ["jpki.va.v1.ListIssuersResponse"] * 2,
}


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


def previous_main() -> str:
    """The commit main was before the commit checked out.

    The landing protocol merges main into a branch and fast-forwards main to it, so a
    merge commit's second parent is the previous main; otherwise the first parent is.
    """
    git = shutil.which("git")
    if git is None:
        pytest.fail("git is needed to find the previous commit's protos")
    parents = subprocess.run(
        [git, "rev-list", "--parents", "-n", "1", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if parents.returncode != 0:
        pytest.fail(f"no git history here: {parents.stderr.strip()}")
    commits = parents.stdout.split()[1:]
    if not commits:
        pytest.fail("HEAD has no parent (a shallow clone?): fetch the history of main")
    return commits[1] if len(commits) > 1 else commits[0]


def test_no_breaking_change_against_the_previous_main(tmp_path: Path) -> None:
    commit = previous_main()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "protos"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:  # a shallow clone, or history rewritten
        pytest.fail(f"cannot read the protos of {commit}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp_path, filter="data")
    if not any((tmp_path / "protos").rglob("*.proto")):
        pytest.fail(f"{commit} has no .proto files under protos/")
    # buf.yaml's module (protos/) and rules (breaking: FILE), on both sides.
    result = run_buf(
        "breaking",
        "--against",
        str(tmp_path),
        "--against-config",
        "buf.yaml",
        "--error-format",
        "json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
