"""The snapshot store: where the signer publishes snapshots and responders find them.

One small interface with two backends: the local directory (the embedded default,
`LocalStore`: the signer and the responder share it) and S3-compatible object storage
(`snapshot.s3_store`, for responders on other hosts).

Publishing is two steps, so that a reader never sees half a snapshot: `upload` puts
every file but the commit where no reader looks for it, `commit` then writes the
signed manifest, and from that moment the snapshot is in `sequences()`. A committed
snapshot is never changed; `withdraw` takes one away (a commit the registry did not
take, or one past retention).

Responders learn that a snapshot may have arrived from the store's pointer
(responder.snapshot_notice), and list `sequences()` then, and every poll period anyway.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from jpki_va.server.snapshot.manifest import MANIFEST, snapshot_dirname, snapshot_sequence
from jpki_va.server.snapshot.writer import prune_abandoned, rename_into_place


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer as it should; nothing changed."""


class SnapshotIncomplete(StoreUnavailable):
    """A committed snapshot lacks a file its manifest lists (a writer that did not
    upload the manifest last): not taken now, asked for again at the next poll."""


class SnapshotStore(Protocol):
    """What the signer and the responders need of a snapshot store."""

    #: Where a responder's ingester reads snapshots: the store itself when it is a
    #: local directory, a staging directory the responder fills otherwise.
    local_root: Path | None

    def describe(self) -> str:
        """Where it is, for logs (never a credential)."""
        ...

    def sequences(self, after: int = 0) -> list[int]:
        """The committed snapshots' sequences above `after`, ascending."""
        ...

    def upload(self, sequence: int, sealed: Path) -> None:
        """Put every file of the sealed snapshot but its manifest (no reader sees them)."""
        ...

    def commit(self, sequence: int, sealed: Path) -> None:
        """Publish: the signed manifest, last. Readers see the snapshot from now on."""
        ...

    def withdraw(self, sequence: int) -> None:
        """Take a committed snapshot away, its manifest first (then nobody starts on it)."""
        ...

    def manifest(self, sequence: int) -> bytes:
        """The committed snapshot's manifest, as stored (unverified)."""
        ...

    def fetch(self, sequence: int, into: Path) -> Path:
        """A local directory holding the committed snapshot, named as in the store.

        Downloaded under a temporary name in `into` and renamed into place, so the
        directory holds all of it or nothing.
        """
        ...

    def fingerprint(self, sequence: int) -> str:
        """What the stored snapshot holds, cheaply: changes when any object changes."""
        ...

    def clear_abandoned(self) -> list[str]:
        """Remove what publishes killed midway left (only for the one signer); names."""
        ...


def publish(store: SnapshotStore, sequence: int, sealed: Path) -> None:
    """Every file, then the manifest: the whole publish for callers without a registry."""
    store.upload(sequence, sealed)
    store.commit(sequence, sealed)


class LocalStore:
    """Snapshots as directories under one root (DESIGN §3): the embedded default.

    A snapshot is sealed under a temporary name in the root itself, so committing is
    one atomic rename: a reader sees no snapshot or a whole one.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.local_root: Path | None = root

    def describe(self) -> str:
        return str(self.root)

    def sequences(self, after: int = 0) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (snapshot_sequence(p) for p in self.root.iterdir())
        return sorted(s for s in found if s is not None and s > after)

    def upload(self, sequence: int, sealed: Path) -> None:
        if sealed.parent != self.root:
            raise ValueError(f"{sealed} is not sealed in {self.root}")

    def commit(self, sequence: int, sealed: Path) -> None:
        rename_into_place(self.root, sealed, sequence)

    def withdraw(self, sequence: int) -> None:
        shutil.rmtree(self.root / snapshot_dirname(sequence), ignore_errors=True)

    def manifest(self, sequence: int) -> bytes:
        try:
            return (self.root / snapshot_dirname(sequence) / MANIFEST).read_bytes()
        except OSError as exc:
            raise StoreUnavailable(f"snapshot {sequence}: {exc}") from exc

    def fetch(self, sequence: int, into: Path) -> Path:
        return self.root / snapshot_dirname(sequence)

    def fingerprint(self, sequence: int) -> str:
        # The ingester fingerprints local directories itself (responder.ingest).
        return ""

    def clear_abandoned(self) -> list[str]:
        return prune_abandoned(self.root)
