"""Private files and directories get their modes at creation, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from jpki_va.server.base.private_files import (
    open_private,
    open_private_text,
    private_dir,
    write_private,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_private_dir_makes_every_missing_parent_0700(tmp_path: Path) -> None:
    deep = private_dir(tmp_path / "a" / "b" / "c")
    assert deep.is_dir()
    assert [_mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", deep)] == [0o700] * 3


def test_private_dir_leaves_an_existing_directory_as_it_is(tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.mkdir(mode=0o750)
    given.chmod(0o750)  # an operator's choice for a directory named on the command line
    private_dir(given)
    assert _mode(given) == 0o750
    assert _mode(private_dir(given / "inner")) == 0o700


def test_private_dir_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        private_dir(tmp_path / "file")


def test_files_are_0600_new_or_truncated(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    write_private(fresh, b"data")
    assert (_mode(fresh), fresh.read_bytes()) == (0o600, b"data")
    old = tmp_path / "old"
    old.write_bytes(b"previous, longer content")
    old.chmod(0o644)
    with open_private(old) as f:
        f.write(b"new")
    assert (_mode(old), old.read_bytes()) == (0o600, b"new")


def test_exclusive_text_file_must_be_new(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    with open_private_text(path, exclusive=True) as f:
        f.write("記録\n")
    assert (_mode(path), path.read_text(encoding="utf-8")) == (0o600, "記録\n")
    with pytest.raises(FileExistsError):
        open_private_text(path, exclusive=True)
    assert path.read_text(encoding="utf-8") == "記録\n"
