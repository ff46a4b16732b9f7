"""The ingester: finds new snapshots, verifies them, builds or updates the index.

A full snapshot builds a new index environment, published by the pointer flip; a
delta is applied to the live environment in one write transaction, in sequence
order, only when it follows the live index exactly (its base is the live full
snapshot, its previous snapshot is the one the index reflects). A delta that does
not follow is skipped: the responder waits for the next full snapshot.

It never goes back to a lower sequence and ingests nothing that fails
verification; a refused snapshot is logged once and the index keeps serving. An
attempt that fails otherwise (the disk full: see storage) is tried again after a
growing pause, and the index keeps serving too (see ingest_health).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry, Counter, Histogram

from jpki_va.core.clock import Clock, SystemClock
from jpki_va.server.responder.crl_archive import CrlArchive, archived
from jpki_va.server.responder.index_build import build_index, publish_index
from jpki_va.server.responder.index_delta import AppliedLoss, DeltaNotApplicable, apply_delta
from jpki_va.server.responder.index_layout import snapshot_events
from jpki_va.server.responder.index_reader import Index, current_index
from jpki_va.server.responder.ingest_health import IngestHealth
from jpki_va.server.responder.storage import no_space
from jpki_va.server.snapshot.manifest import MANIFEST, SnapshotRejected, snapshot_sequence
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


@dataclass(frozen=True)
class _Live:
    """What the live index reflects."""

    path: Path
    sequence: int
    full_sequence: int
    event_sequence: int


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
    ) -> None:
        self._snapshots = snapshot_dir
        # Runs on a built index before workers can see it (the responder certifies
        # its OCSP key for the index's issuers there, so no answer waits for it).
        self._before_publish = before_publish
        self._root = index_root
        self._verifier = verifier
        self._archive = archive
        self._retention = retention
        self._metrics = metrics or IngestMetrics(CollectorRegistry())
        self._clock = SystemClock() if retention is None else retention[0]
        self._refused: set[str] = set()
        self._seen: set[str] | None = None  # snapshots present at start, or ingested
        self._live: _Live | None = None
        index_root.mkdir(parents=True, exist_ok=True)
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
                if path.name in self._seen or self._type(path) == "delta":
                    self._refused.add(path.name)  # superseded: nothing to say
                else:
                    # Arrived after a higher one was ingested: never go back.
                    self._refuse(path, f"sequence {seq} <= live {live}")
                continue
            found.append((seq, path))
        return [p for _, p in sorted(found)]

    def _refuse(self, path: Path, why: str) -> None:
        self._refused.add(path.name)
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
        return result

    def _ingest_full(self, path: Path) -> IngestResult | None:
        previous = self._live_state()
        try:
            snapshot = self._verifier.verify(path)
            if snapshot.manifest.type != "full":
                raise SnapshotRejected("its manifest does not say full")
            if snapshot.sequence <= self.sequence:
                raise SnapshotRejected(f"sequence {snapshot.sequence} is not above {self.sequence}")
            built = build_index(snapshot, self._root)
        except SnapshotRejected as exc:
            self._refuse(path, str(exc))
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
        try:
            snapshot = self._verifier.verify(path)
            applied = apply_delta(snapshot, live.path)
        except DeltaNotApplicable as exc:
            self._refuse(path, f"{exc}; waiting for the next full snapshot")
            return None
        except SnapshotRejected as exc:
            self._refuse(path, str(exc))
            return None
        published_at = self._clock.now()
        self._live = _Live(
            live.path, applied.sequence, live.full_sequence, snapshot.manifest.event_sequence
        )
        for loss in applied.losses:
            self._observe_loss(loss, published_at)
        self._metrics.snapshots.labels("delta").inc()
        log.info(
            "applied delta snapshot %s: %d records, %d losses",
            path.name,
            applied.records,
            len(applied.losses),
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
