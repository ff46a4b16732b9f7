"""One live holder per directory: a second is refused naming the first, until released."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jpki_va.server.app.dir_lock import DirectoryInUse, DirectoryLock


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    first = DirectoryLock(tmp_path / "data", "signer")
    try:
        # flock belongs to the open file, so a second open in this process conflicts
        # just as another process's would.
        refusal = rf"in use by another live signer \(pid {os.getpid()}\)"
        with pytest.raises(DirectoryInUse, match=refusal):
            DirectoryLock(tmp_path / "data", "signer")
    finally:
        first.release()
    second = DirectoryLock(tmp_path / "data", "signer")
    second.release()
    second.release()  # twice is harmless
