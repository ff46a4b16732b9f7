"""The ingester: finds new snapshots, verifies them, builds and publishes the index.

It never goes back to a lower sequence and ingests nothing that fails
verification; a refused snapshot is logged once and the previous index keeps
serving.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from server.clock import Clock
from server.crl_archive import CrlArchive, archived
from server.index import build_index, current_index, publish_index
from server.snapshot import (
    SnapshotRejected,
    SnapshotVerifier,
    VerifiedSnapshot,
    snapshot_sequence,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    sequence: int
    path: Path


class Ingester:
    KEEP_INDEXES = 2  # the live one and the one before it, for workers still closing it

    def __init__(
        self,
        snapshot_dir: Path,
        index_root: Path,
        verifier: SnapshotVerifier,
        archive: CrlArchive | None = None,
        retention: tuple[Clock, timedelta] | None = None,
    ) -> None:
        self._snapshots = snapshot_dir
        self._root = index_root
        self._verifier = verifier
        self._archive = archive
        self._retention = retention
        self._refused: set[str] = set()
        self._seen: set[str] | None = None  # snapshot names present at start
        index_root.mkdir(parents=True, exist_ok=True)

    @property
    def sequence(self) -> int:
        current = current_index(self._root)
        if current is None:
            return 0
        return int(current.name.removeprefix("idx-"))

    def pending(self) -> list[Path]:
        """Snapshots newer than the live index, oldest first."""
        if not self._snapshots.is_dir():
            return []
        live = self.sequence
        found = []
        names = list(self._snapshots.iterdir())
        if self._seen is None:
            self._seen = {p.name for p in names}
        for path in names:
            seq = snapshot_sequence(path)
            if seq is None or path.name in self._refused:
                continue
            if seq <= live:
                if path.name not in self._seen:
                    # Arrived after a higher one was ingested: never go back.
                    self._refused.add(path.name)
                    log.error("refused snapshot %s: sequence %d <= live %d", path.name, seq, live)
                continue
            found.append((seq, path))
        return [p for _, p in sorted(found)]

    def poll_once(self) -> IngestResult | None:
        """Ingest the newest acceptable full snapshot, if there is one."""
        for path in reversed(self.pending()):
            try:
                snapshot = self._verifier.verify(path)
                if snapshot.manifest.type != "full":
                    continue
                if snapshot.sequence <= self.sequence:
                    raise SnapshotRejected(
                        f"sequence {snapshot.sequence} is not above {self.sequence}"
                    )
                built = build_index(snapshot, self._root)
            except SnapshotRejected as exc:
                self._refused.add(path.name)
                log.error("refused snapshot %s: %s", path.name, exc)
                continue
            self._archive_crls(snapshot)
            publish_index(self._root, built)
            self._prune()
            log.info("ingested snapshot %s", path.name)
            return IngestResult(snapshot.sequence, built)
        return None

    def _archive_crls(self, snapshot: VerifiedSnapshot) -> None:
        """Keep the snapshot's verified CRLs before its index serves (第18条2項, 第37条2項)."""
        if self._archive is None:
            return
        self._archive.add(
            archived(
                vc.info.kind,
                vc.info.issuer_key_id,
                vc.info.partition,
                vc.info.number,
                vc.info.this_update,
                vc.info.next_update,
                vc.crl.public_bytes(Encoding.DER),
            )
            for vc in snapshot.crls
            if vc.info.delta_base is None
        )
        if self._retention is not None:
            clock, period = self._retention
            pruned = self._archive.prune(clock.now(), period)
            if pruned:
                log.info("pruned %d CRL files past their retention period", pruned)

    def _prune(self) -> None:
        indexes = sorted(p for p in self._root.iterdir() if p.name.startswith("idx-"))
        for old in indexes[: -self.KEEP_INDEXES]:
            shutil.rmtree(old, ignore_errors=True)

    def run(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("ingest failed; will retry")
            stop.wait(interval)
