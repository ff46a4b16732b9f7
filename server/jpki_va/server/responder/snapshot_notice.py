"""Learn of a new snapshot at once, without waiting out a poll period.

The store's pointer: something small whose value changes whenever a snapshot is
committed, read at sub-second intervals; the full scan of the store runs when it
changes, and every poll period anyway (the fallback when the pointer says nothing, or
cannot be read). For the local directory the pointer is the directory itself: a
snapshot is committed by renaming it into place, which changes the directory's
modification time and link count, so one stat() says whether anything arrived. An
object store gets a small pointer object the signer writes after each manifest.

Chosen over the alternatives because it has no channel of its own that can break: a
push from the signer needs a subscription, reconnection and a fallback when it is
down; store notifications differ per backend (inotify, S3 event queues) and need a
queue service in S3's case. Polling one small thing every 0.2 s costs nothing a
replica would notice, and a reader that misses a change still finds it at the next
full scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class SnapshotNotice(Protocol):
    """What a store says cheaply about whether a snapshot may have arrived."""

    def marker(self) -> bytes:
        """A value that changes when a snapshot is committed (b"": cannot tell now)."""
        ...


class DirectoryNotice:
    """The local directory store's pointer: the directory's own inode data."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def marker(self) -> bytes:
        try:
            st = self._directory.stat()
        except OSError:
            return b""
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_nlink}:{st.st_size}".encode()


class PollOnly:
    """A store with no pointer to read (yet): every poll period scans it."""

    def marker(self) -> bytes:
        return b""
