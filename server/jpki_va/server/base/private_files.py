"""Files and directories only the service's own user may open, whatever the umask.

The registry holds resident codes, the snapshots the signing records (name, address,
birth date, sex), the ledgers who was given what: nothing a role keeps on disk is for
another local user. So modes are set where a path is created, never left to the
umask, which a service manager or a shell may have set to anything: a file is opened
with its mode (and fchmod-ed, since an existing file keeps its mode through
O_TRUNC), a directory is chmod-ed after mkdir (mkdir honours the umask), and LMDB is
given `mode=LMDB_MODE`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, TextIO

DIR_MODE = 0o700
FILE_MODE = 0o600
#: LMDB's `mode=`: the environment's directory gets it, its data and lock files the
#: same without the execute bits (0600).
LMDB_MODE = 0o700


def private_dir(path: Path) -> Path:
    """`path` as a directory, it and every missing parent created 0700.

    A directory that already exists keeps its mode: it may be the operator's choice
    (a data directory given on the command line).
    """
    missing = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if directory.is_dir():
                continue  # another process made it meanwhile
            raise
        directory.chmod(DIR_MODE)
    return path


def _open_fd(path: Path, exclusive: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: Path, *, exclusive: bool = False) -> BinaryIO:
    """A file opened for writing, created (or truncated) 0600; `exclusive`: must be new."""
    return os.fdopen(_open_fd(path, exclusive), "wb")


def open_private_text(path: Path, *, exclusive: bool = False) -> TextIO:
    """`open_private` for UTF-8 text."""
    return io.TextIOWrapper(open_private(path, exclusive=exclusive), encoding="utf-8")


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to a file created (or truncated) 0600."""
    with open_private(path) as f:
        f.write(data)
