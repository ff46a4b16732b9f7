"""The responder's state on a filling disk: what a write error means, and lock files
that cannot fault.

A full disk seldom says ENOSPC through LMDB. A write that fits only in part comes back
short and LMDB reports EIO ("mdb_txn_commit: Input/output error"); only a write with
no room at all is ENOSPC (lmdb.DiskError). So an I/O error is taken for a full disk
when the file system has next to no room left, measured before the failed write's
files are removed. Worse, LMDB writes its lock file (the reader table) through a
shared mapping: where no block backs the page it touches, a full file system kills
the process with SIGBUS. A new environment's lock file is therefore allocated
(posix_fallocate) before LMDB opens it, so a full disk fails that call with ENOSPC
and the reader table never faults.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lmdb

from jpki_va.server.base.private_files import LMDB_MODE

LOCK_FILE = "lock.mdb"
# LMDB's table of 126 readers takes 8 KiB; it sizes the table by an existing file, so
# a larger one only gives more reader slots.
LOCK_FILE_BYTES = 64 * 1024
# Below this much free space an I/O error from a write is taken for a full disk.
LOW_SPACE = 1 << 20

_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = tuple(os.strerror(code) for code in _FULL)  # how LMDB's messages end


class NoSpace(Exception):
    """No space left on the device that holds (part of) the responder's state."""


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on `directory`'s file system."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def prepare_lock_file(environment: Path) -> None:
    """Allocate the lock file of a new LMDB environment before LMDB maps it.

    Only for an environment nobody has opened yet: growing the lock file of an open
    one would give its openers tables of different sizes.
    """
    fd = os.open(environment / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL, LMDB_MODE)
    try:
        os.posix_fallocate(fd, 0, LOCK_FILE_BYTES)
    except BaseException:
        os.close(fd)
        (environment / LOCK_FILE).unlink(missing_ok=True)
        raise
    os.close(fd)


def _says(exc: BaseException, codes: tuple[int, ...], texts: tuple[str, ...]) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in codes
    return isinstance(exc, lmdb.Error) and str(exc).endswith(texts)


def no_space(exc: BaseException, directory: Path) -> NoSpace | None:
    """The NoSpace that `exc`, met writing under `directory`, means; None if another fault."""
    if isinstance(exc, NoSpace):
        return exc
    try:
        free = free_bytes(directory)
    except OSError:
        free = None
    room = "" if free is None else f" ({free} bytes free in {directory})"
    if isinstance(exc, lmdb.MapFullError):
        # The environment's own limit, not the disk's; it stops the build all the same.
        return NoSpace(f"no space left in the LMDB map (MDB_MAP_FULL){room}")
    if isinstance(exc, lmdb.DiskError) or _says(exc, _FULL, _FULL_TEXT):
        return NoSpace(f"no space left on device{room}")
    if (
        free is not None
        and free < LOW_SPACE
        and _says(exc, (errno.EIO,), (os.strerror(errno.EIO),))
    ):
        return NoSpace(f"no space left on device{room}; the write failed with EIO")
    return None
