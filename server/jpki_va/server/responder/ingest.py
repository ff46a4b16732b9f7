"""The ingester: finds new snapshots, verifies them, builds or updates the index.

A full snapshot builds a new index environment, published by the pointer flip; a
delta is applied to the live environment in one write transaction, in sequence
order, only when it follows the live index exactly (its base is the live full
snapshot, its previous snapshot is the one the index reflects). A delta that does
not follow is skipped: the responder waits for the next full snapshot.

It never goes back to a lower sequence and ingests nothing that fails
verification; a refused snapshot is logged and counted once and the index keeps
serving. A refused snapshot is not verified again while it stays as it was, but it
is as soon as its content changes (a genuine copy put back in place, or a new
directory under its name): a refused delta must not hold back the deltas after it
until the next full snapshot. An attempt that fails otherwise (the disk full: see
storage) is tried again after a growing pause, and the index keeps serving too (see
ingest_health).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jpki_va.core.clock import Clock, SystemClock
from jpki_va.server.base.private_files import private_dir
from jpki_va.server.responder.crl_archive import CrlArchive, archived
from jpki_va.server.responder.index_build import build_index, publish_index
from jpki_va.server.responder.index_delta import AppliedLoss, DeltaNotApplicable, apply_delta
from jpki_va.server.responder.index_layout import snapshot_events
from jpki_va.server.responder.index_reader import Index, current_index
from jpki_va.server.responder.ingest_health import IngestHealth
from jpki_va.server.responder.storage import no_space
from jpki_va.server.snapshot.manifest import (
    MANIFEST,
    SIGNATURE,
    SnapshotRejected,
    snapshot_sequence,
)
from jpki_va.server.snapshot.store import StoreUnavailable
from jpki_va.server.snapshot.verify import SnapshotVerifier, VerifiedSnapshot

log = logging.getLogger(__name__)

# Seconds: the default delta interval is 5 s and the promise is 10 s at p99.
FRESHNESS_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5, 10.0, 15.0, 30.0, 60.0, 300.0)


class IngestMetrics:
    """The ingester's Prometheus metrics, in the registry the composition root serves."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.freshness = Histogram(
            "jpki_va_loss_freshness_seconds",
            "Seconds from the registry commit of a loss of effect to the first index "
            "state (visible to every worker) that reflects it",
            buckets=FRESHNESS_BUCKETS,
            registry=registry,
        )
        self.snapshots = Counter(
            "jpki_va_snapshots_ingested",
            "Snapshots ingested, by type",
            ["type"],
            registry=registry,
        )
        self.refused = Counter(
            "jpki_va_snapshots_refused", "Snapshots refused or skipped", registry=registry
        )
        self.refused_waiting = Gauge(
            "jpki_va_snapshots_refused_waiting",
            "Refused snapshots above the live index, still in the snapshot directory: "
            "the deltas after one wait until it is replaced or a full snapshot comes",
            registry=registry,
        )


@dataclass(frozen=True)
class _Live:
    """What the live index reflects."""

    path: Path
    sequence: int
    full_sequence: int
    event_sequence: int


def _fingerprint(path: Path) -> bytes:
    """What a snapshot directory holds, cheaply: every entry's name, inode, size and times,
    and the manifest and its signature byte for byte (timestamps may be coarse).

    ctime cannot be set back by a writer, so rewriting a file in place changes it even
    when size and mtime are restored; a directory copied in anew changes the inodes.
    """
    digest = hashlib.sha256()
    stack = [path]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                st = entry.stat(follow_symlinks=False)
                digest.update(
                    f"{entry.path}\0{st.st_mode}\0{st.st_ino}\0{st.st_size}\0"
                    f"{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode("utf-8", "surrogateescape")
                )
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    st = path.stat()
    digest.update(f"{st.st_ino}\0{st.st_ctime_ns}\n".encode())
    for name in (MANIFEST, SIGNATURE):
        try:
            digest.update(hashlib.sha256((path / name).read_bytes()).digest())
        except OSError:
            digest.update(b"-")
    return digest.digest()


def _fingerprint_now(path: Path) -> bytes:
    """The fingerprint, or b"" (matching none) when the directory cannot be read."""
    try:
        return _fingerprint(path)
    except OSError:
        return b""


@dataclass(frozen=True)
class IngestResult:
    sequence: int
    path: Path
    type: Literal["full", "delta"] = "full"
    losses: int = 0


class Ingester:
    KEEP_INDEXES = 2  # the live one and the one before it, for workers still closing it

    def __init__(
        self,
        snapshot_dir: Path,
        index_root: Path,
        verifier: SnapshotVerifier,
        archive: CrlArchive | None = None,
        retention: tuple[Clock, timedelta] | None = None,
        *,
        metrics: IngestMetrics | None = None,
        before_publish: Callable[[Path], None] | None = None,
        health: IngestHealth | None = None,
        stage: Callable[[int, frozenset[str]], None] | None = None,
    ) -> None:
        self._snapshots = snapshot_dir
        # Fills `snapshot_dir` from a remote store before each poll (responder.staging),
        # given the live sequence and the names refused; None: the store is local.
        self._stage = stage
        # Runs on a built index before workers can see it (the responder certifies
        # its OCSP key for the index's issuers there, so no answer waits for it).
        self._before_publish = before_publish
        self._root = index_root
        self._verifier = verifier
        self._archive = archive
        self._retention = retention
        self._metrics = metrics or IngestMetrics(CollectorRegistry())
        self._clock = SystemClock() if retention is None else retention[0]
        # Refused snapshots by name, with what they held then (_fingerprint): skipped
        # until their content changes.
        self._refused: dict[str, bytes] = {}
        # At or below the live sequence: never looked at again (never go back).
        self._behind: set[str] = set()
        self._seen: set[str] | None = None  # snapshots present at start, or ingested
        self._live: _Live | None = None
        self._newest: tuple[int, str] = (0, "")  # the highest in the store at the last scan
        private_dir(index_root)
        self._health = health or IngestHealth(index_root, retry_base=1.0)

    @property
    def metrics(self) -> IngestMetrics:
        return self._metrics

    @property
    def health(self) -> IngestHealth:
        return self._health

    def _live_state(self) -> _Live | None:
        current = current_index(self._root)
        if current is None:
            return None
        if self._live is None or self._live.path != current:
            index = Index(current)
            try:
                self._live = _Live(
                    current, index.sequence, index.full_sequence, index.event_sequence
                )
            finally:
                index.close()
        return self._live

    @property
    def sequence(self) -> int:
        """The snapshot sequence the live index reflects (a full or its latest delta)."""
        live = self._live_state()
        return 0 if live is None else live.sequence

    def pending(self) -> list[Path]:
        """Snapshots newer than the live index, oldest first, but those refused as they are."""
        if not self._snapshots.is_dir():
            return []
        live = self.sequence
        found = []
        names = list(self._snapshots.iterdir())
        present = {p.name for p in names}
        if self._seen is None:
            self._seen = set(present)
        # Forget what is gone, so a long-running responder's memory stays bounded.
        self._behind &= present
        for name in self._refused.keys() - present:
            del self._refused[name]
        self._newest = max(
            ((s, p.name) for p in names if (s := snapshot_sequence(p)) is not None),
            default=(0, ""),
        )
        for path in names:
            seq = snapshot_sequence(path)
            if seq is None or path.name in self._behind:
                continue
            if seq <= live:
                self._behind.add(path.name)
                refused = self._refused.pop(path.name, None) is not None
                if not (refused or path.name in self._seen or self._type(path) == "delta"):
                    # Arrived after a higher one was ingested: never go back.
                    self._refuse(path, f"sequence {seq} <= live {live}")
                continue  # else superseded: nothing to say
            if path.name in self._refused and not self._changed(path):
                continue
            found.append((seq, path))
        return [p for _, p in sorted(found)]

    def _changed(self, path: Path) -> bool:
        """Whether a refused snapshot's content changed since it was refused."""
        now = _fingerprint_now(path)
        if not now or now == self._refused[path.name]:
            return False  # unchanged, or unreadable now
        del self._refused[path.name]
        log.info("snapshot %s changed since it was refused; verifying it again", path.name)
        return True

    @property
    def newest(self) -> int:
        """The highest snapshot sequence in the store at the last scan (0: none)."""
        return self._newest[0]

    @property
    def newest_refused(self) -> bool:
        """Whether the newest snapshot in the store was refused as it is now."""
        return self._newest[1] in self._refused

    @property
    def refused_waiting(self) -> list[str]:
        """Names of refused snapshots above the live index, oldest first."""
        live = self.sequence
        return sorted(
            name
            for name in self._refused
            if (seq := snapshot_sequence(Path(name))) is not None and seq > live
        )

    def _refuse(self, path: Path, why: str, fingerprint: bytes = b"") -> None:
        """Say once what was refused and why; remember what it held when it was read.

        `fingerprint` is taken before verification: content that changed while it was
        verified (a copy still being made) then differs from it and is tried again.
        """
        if snapshot_sequence(path) is not None and path.name not in self._behind:
            self._refused[path.name] = fingerprint
        self._metrics.refused.inc()
        log.error("refused snapshot %s: %s", path.name, why)

    @staticmethod
    def _peek(path: Path) -> dict[str, Any]:
        """The manifest as it says, BEFORE verification: only to choose what to verify."""
        try:
            data = json.loads((path / MANIFEST).read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _type(self, path: Path) -> str | None:
        kind = self._peek(path).get("type")
        return kind if isinstance(kind, str) else None

    def _follows(self, path: Path) -> bool:
        """Whether a delta says it follows the live index (verified again when applied)."""
        live = self._live_state()
        manifest = self._peek(path)
        return (
            live is not None
            and manifest.get("base_sequence") == live.full_sequence
            and manifest.get("previous_sequence") == live.sequence
        )

    def poll_once(self) -> IngestResult | None:
        """Ingest the newest acceptable full snapshot, then every delta that follows.

        A delta that does not follow the live index yet (one before it is missing)
        stays pending: it is applied if the missing one arrives, and superseded by
        the next full snapshot otherwise. A failed attempt is counted in `health`,
        which also says when the next may be made; until then this does nothing.
        """
        if not self._health.due():
            return None
        try:
            result = self._poll()
        except Exception as exc:
            self._health.failed(no_space(exc, self._root) or exc)
            return None
        self._health.succeeded()
        return result

    def _poll(self) -> IngestResult | None:
        store_error: StoreUnavailable | None = None
        if self._stage is not None:
            try:
                self._stage(self.sequence, frozenset(self._refused))
            except StoreUnavailable as exc:
                store_error = exc  # what was staged is still ingested
        pending = self.pending()
        result = None
        for path in reversed([p for p in pending if self._type(p) != "delta"]):
            result = self._ingest_full(path)
            if result is not None:
                break
        progress = True
        while progress:
            progress = False
            for path in self.pending():
                if self._type(path) != "delta" or not self._follows(path):
                    continue
                applied = self._ingest_delta(path)
                if applied is not None:
                    result, progress = applied, True
                    break
        self._metrics.refused_waiting.set(len(self.refused_waiting))
        if store_error is not None:
            raise store_error
        return result

    def _ingest_full(self, path: Path) -> IngestResult | None:
        previous = self._live_state()
        read = _fingerprint_now(path)
        try:
            snapshot = self._verifier.verify(path)
            if snapshot.manifest.type != "full":
                raise SnapshotRejected("its manifest does not say full")
            if snapshot.sequence <= self.sequence:
                raise SnapshotRejected(f"sequence {snapshot.sequence} is not above {self.sequence}")
            built = build_index(snapshot, self._root)
        except SnapshotRejected as exc:
            self._refuse(path, str(exc), read)
            return None
        self._archive_crls(snapshot)
        if self._before_publish is not None:
            try:
                self._before_publish(built)
            except Exception:
                log.exception("preparing index %s failed; publishing it anyway", built.name)
        publish_index(self._root, built)
        published_at = self._clock.now()
        self._seen = (self._seen or set()) | {path.name}
        self._prune()
        losses = 0
        if previous is not None:
            # Losses a full snapshot brings first (no delta could carry them).
            for event in snapshot_events(snapshot):
                if event.sequence > previous.event_sequence:
                    self._observe(event.recorded_at, published_at)
                    losses += 1
        self._metrics.snapshots.labels("full").inc()
        log.info("ingested full snapshot %s", path.name)
        return IngestResult(snapshot.sequence, built, "full", losses)

    def _ingest_delta(self, path: Path) -> IngestResult | None:
        live = self._live_state()
        if live is None:
            return None  # a delta needs a live full index
        began = time.perf_counter()
        read = _fingerprint_now(path)
        try:
            snapshot = self._verifier.verify(path)
            verified = time.perf_counter()
            applied = apply_delta(snapshot, live.path)
        except DeltaNotApplicable as exc:
            self._refuse(path, f"{exc}; waiting for the next full snapshot", read)
            return None
        except SnapshotRejected as exc:
            self._refuse(path, str(exc), read)
            return None
        published_at = self._clock.now()
        self._live = _Live(
            live.path, applied.sequence, live.full_sequence, snapshot.manifest.event_sequence
        )
        for loss in applied.losses:
            self._observe_loss(loss, published_at)
        self._metrics.snapshots.labels("delta").inc()
        # The two halves of a replica's part in freshness, for whoever chases it.
        log.info(
            "applied delta snapshot %s: %d records, %d losses (verified in %.3f s, "
            "applied in %.3f s)",
            path.name,
            applied.records,
            len(applied.losses),
            verified - began,
            time.perf_counter() - verified,
        )
        return IngestResult(applied.sequence, live.path, "delta", len(applied.losses))

    def _archive_crls(self, snapshot: VerifiedSnapshot) -> None:
        """Keep the snapshot's verified CRLs before its index serves (第18条2項, 第37条2項).

        Full CRLs only: a delta CRL is superseded within one delta interval.
        """
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

    def _observe_loss(self, loss: AppliedLoss, published_at: datetime) -> None:
        if loss.recorded_at is not None:
            self._observe(loss.recorded_at, published_at)

    def _observe(self, recorded_at: datetime, published_at: datetime) -> None:
        self._metrics.freshness.observe(max(0.0, (published_at - recorded_at).total_seconds()))

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
