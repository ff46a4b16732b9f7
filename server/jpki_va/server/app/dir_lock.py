"""One live process per directory: the signer's data directory, a responder's state.

Only the holder may clear what a killed predecessor left there (a snapshot being
written, an index being built): with a second live process on the directory, that
leftover could be its work in progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from jpki_va.server.base.private_files import private_dir


class DirectoryInUse(OSError):
    """Another live process holds the directory."""


class DirectoryLock:
    """An exclusive hold on a directory for the life of this process, or until release().

    An flock on a file in it: the kernel drops it when the holder exits however it
    exits (SIGKILL included), so a crash needs no clean-up before a restart. The
    descriptor is close-on-exec, so no program started from here (a spawned worker)
    keeps it. The holder writes its pid in the file, for the refusal's message only.
    """

    def __init__(self, directory: Path, role: str, name: str = "owner.lock") -> None:
        self.path = directory / name
        private_dir(directory)  # it holds resident codes or the index: 0700 if made here
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BlockingIOError:
            os.close(fd)
            holder = _holder(self.path)
            raise DirectoryInUse(f"{directory} is in use by another live {role}{holder}") from None
        except OSError:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(path.read_text().strip())})"
    return ""
