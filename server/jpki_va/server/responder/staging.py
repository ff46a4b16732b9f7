"""Staging: snapshots from a remote store, brought to a local directory for the ingester.

The ingester reads snapshots from a directory and verifies each exactly as it would
one the signer wrote beside it (snapshot.verify). For a store on other hosts this
module fills that directory: every committed snapshot above the live index, from
the newest full one on, downloaded whole under a temporary name and renamed into
place (snapshot.store.SnapshotStore.fetch). A staged snapshot the ingester refused is
fetched again once the store's copy changes (a genuine one put back), and staged
snapshots at or below the live index are removed.

What goes wrong with the store is raised as StoreUnavailable after what could be
staged was: the ingester then still ingests it, and its health says the store fails.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from jpki_va.server.base.private_files import private_dir
from jpki_va.server.snapshot.manifest import snapshot_dirname, snapshot_sequence
from jpki_va.server.snapshot.store import SnapshotStore, StoreUnavailable

log = logging.getLogger(__name__)


class Stager(Collector):
    """Brings a remote store's new snapshots into the ingester's directory."""

    def __init__(self, store: SnapshotStore, staging: Path) -> None:
        self._store = store
        self._dir = staging
        private_dir(staging)
        # name -> the store's fingerprint of it when it was fetched
        self._fetched: dict[str, str] = {}
        self._failing: str | None = None
        self._failures = 0
        self._fetches = 0

    def stage(self, live: int, refused: frozenset[str]) -> None:
        """Fetch what is new above `live`; again what was refused and has changed since."""
        self._remove_behind(live)
        try:
            wanted = self._wanted(live, refused)
            for sequence in wanted:
                self._stage_one(sequence, refused)
        except StoreUnavailable as exc:
            # Logged by the ingest health, once per change of state.
            self._failures += 1
            self._failing = str(exc)
            raise
        self._failing = None

    def _wanted(self, live: int, refused: frozenset[str]) -> list[int]:
        """Committed sequences above `live` from the newest full snapshot on that was
        not refused (as the ingester tries full snapshots, newest first)."""
        committed = self._store.sequences(after=live)
        for i in range(len(committed) - 1, -1, -1):
            if self._is_full(committed[i]) and snapshot_dirname(committed[i]) not in refused:
                return committed[i:]
        return committed  # no full one to take: deltas that may follow the live index

    def _is_full(self, sequence: int) -> bool:
        """What the manifest says it is, before verification: only to choose what to fetch."""
        try:
            data = json.loads(self._store.manifest(sequence))
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("type") == "full"

    def _stage_one(self, sequence: int, refused: frozenset[str]) -> None:
        name = snapshot_dirname(sequence)
        if (self._dir / name).is_dir():
            if name not in refused:
                return
            if self._store.fingerprint(sequence) == self._fetched.get(name):
                return  # refused as it still is
            log.info("snapshot %s changed in the store since it was refused; fetching it", name)
        fingerprint = self._store.fingerprint(sequence)
        self._store.fetch(sequence, self._dir)
        self._fetched[name] = fingerprint
        self._fetches += 1
        log.info("fetched snapshot %s from %s", name, self._store.describe())

    def _remove_behind(self, live: int) -> None:
        """Staged snapshots the live index has passed: nothing reads them again."""
        if not self._dir.is_dir():
            return
        for path in self._dir.iterdir():
            sequence = snapshot_sequence(path)
            if sequence is not None and sequence <= live:
                shutil.rmtree(path, ignore_errors=True)
                self._fetched.pop(path.name, None)

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "jpki_va_store_failing",
            "1 while the snapshot store cannot be read; the last good index keeps serving.",
            int(self._failing is not None),
        )
        yield CounterMetricFamily(
            "jpki_va_store_failures", "Polls of the snapshot store that failed.", self._failures
        )
        yield CounterMetricFamily(
            "jpki_va_store_fetches", "Snapshots fetched from the snapshot store.", self._fetches
        )
