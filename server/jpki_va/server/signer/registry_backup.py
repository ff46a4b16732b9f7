"""The registry's safety: online, consistent backups to the object store, and restore.

A backup is LMDB's own copy of the registry environment, compacted (`env.copy(compact
=True)`: one read transaction, so a consistent state while the signer keeps writing,
without free pages). Its SHA-256 is computed as it is written and recorded beside it
in `backup.json`, uploaded last: a backup without its record is not one. A restore
downloads the newest (or a named) backup into an empty data directory, checks the
hash and that LMDB opens it, and only then puts it where the signer looks.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from jpki_va.core.clock import Clock
from jpki_va.server.base.private_files import private_dir
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.snapshot.manifest import _sha256_file
from jpki_va.server.snapshot.store import SnapshotStore

log = logging.getLogger(__name__)

FORMAT = "jpki-va-registry-backup/1"
DATA = "data.mdb"  # LMDB's file name in an environment directory


class BackupError(Exception):
    """A backup or restore that could not be made; nothing was changed."""


@runtime_checkable
class BackupStore(Protocol):
    """Where backups go (snapshot.s3_store.S3Store is one)."""

    def describe(self) -> str: ...

    def put_backup(self, name: str, data: Path, record: bytes) -> None:
        """Upload `data`, then `record` (the commit)."""
        ...

    def backups(self) -> list[str]:
        """Names of committed backups, oldest first."""
        ...

    def get_backup(self, name: str, data: Path) -> bytes:
        """Download the backup's data to `data`; its record."""
        ...

    def remove_backup(self, name: str) -> None:
        """Remove a backup, its record first."""
        ...


@dataclass(frozen=True)
class BackupRecord:
    name: str
    sha256: str
    size: int  # bytes
    created_at: str
    snapshot_sequence: int  # the last snapshot the registry had recorded
    event_sequence: int  # the last loss event it holds
    format: str = FORMAT

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> BackupRecord:
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise BackupError(f"unknown backup format {data.get('format')!r}")
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise BackupError(f"unreadable backup record: {exc}") from exc


KEEP = 48  # backups kept in the store: two days of hourly ones


def backup_registry(
    registry: Registry, store: BackupStore, clock: Clock, scratch: Path, keep: int = KEEP
) -> BackupRecord:
    """Copy the live registry (compacted), hash it and upload it with its record; then
    remove all but the newest `keep` backups."""
    now = clock.now()
    private_dir(scratch)
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=scratch) as tmp:
        copy = Path(tmp)
        registry.copy_compacted(copy)
        with registry.read() as tx:
            snapshot_sequence = tx.counter("snapshot")
            event_sequence = tx.counter("event")
        data = copy / DATA
        record = BackupRecord(
            name=f"registry-{now.strftime('%Y%m%dT%H%M%S%fZ')}",
            sha256=_sha256_file(data),
            size=data.stat().st_size,
            created_at=now.isoformat(),
            snapshot_sequence=snapshot_sequence,
            event_sequence=event_sequence,
        )
        store.put_backup(record.name, data, record.to_bytes())
    for old in store.backups()[:-keep]:
        store.remove_backup(old)
    log.info(
        "registry backed up to %s as %s (%d bytes, sha256 %s)",
        store.describe(),
        record.name,
        record.size,
        record.sha256,
    )
    return record


def restore_registry(store: BackupStore, registry_dir: Path, name: str | None) -> BackupRecord:
    """Put a backup (the newest unless named) into an empty registry directory."""
    if registry_dir.exists() and any(registry_dir.iterdir()):
        raise BackupError(f"{registry_dir} is not empty: restore into a new data directory")
    names = store.backups()
    if not names:
        raise BackupError(f"no backup in {store.describe()}")
    chosen = name or names[-1]
    if chosen not in names:
        raise BackupError(f"no backup named {chosen!r} in {store.describe()}")
    private_dir(registry_dir.parent)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=registry_dir.parent) as tmp:
        work = Path(tmp) / "registry"
        private_dir(work)
        record = BackupRecord.from_bytes(store.get_backup(chosen, work / DATA))
        actual = _sha256_file(work / DATA)
        if actual != record.sha256:
            raise BackupError(f"backup {chosen}: SHA-256 {actual} differs from its record")
        Registry(work).close()  # LMDB opens it: not only the right bytes, a registry
        if registry_dir.exists():
            registry_dir.rmdir()
        work.rename(registry_dir)
    log.info("restored the registry from %s (%s)", chosen, record.sha256)
    return record


def losses_published_since(record: BackupRecord, snapshots: SnapshotStore) -> int:
    """How many loss events the store's newest snapshot holds beyond the backup: losses
    published after it, which a signer restored from it does not know (its manifest's
    word, unverified: for the operator to act on, not for the registry)."""
    sequences = snapshots.sequences(after=record.snapshot_sequence)
    if not sequences:
        return 0
    try:
        newest = int(json.loads(snapshots.manifest(sequences[-1]))["event_sequence"])
    except (ValueError, KeyError, TypeError):
        return 0
    return max(0, newest - record.event_sequence)


class BackupSchedule:
    """A backup every `interval` seconds, in a thread of its own; failures logged."""

    def __init__(self, backup: Callable[[], BackupRecord], interval: float) -> None:
        self._backup = backup
        self._interval = interval
        self._stop = threading.Event()
        self.last: BackupRecord | None = None
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="registry-backup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.last = self._backup()
            except Exception as exc:
                self.failures += 1
                log.error("registry backup failed: %s; next attempt in %gs", exc, self._interval)
