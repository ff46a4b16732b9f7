"""The buf CLI the dev extra installs (buf-bin): lint, breaking, curl, generate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO


def buf() -> str:
    found = shutil.which("buf") or shutil.which("buf", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("buf not found: ./tasks setup installs it (buf-bin, dev extra)")
    return found


def run_buf(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [buf(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
