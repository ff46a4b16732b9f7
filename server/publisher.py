"""Publishing snapshots: registry state -> signed CRLs, records and a signed manifest."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from server import profiles
from server.authority import Authority
from server.clock import Clock
from server.domain import CertKind
from server.profiles import CrlEntry, ProfileSettings
from server.records import encode_file_record
from server.registry import Registry
from server.snapshot import SnapshotBuilder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedSnapshot:
    sequence: int
    path: Path
    crl_count: int
    record_count: int


def crl_counter(kind: CertKind, issuer_key_id: bytes, partition: str) -> str:
    """Registry counter of a partition's CRL numbers (shared by full and delta CRLs)."""
    return f"crl:{kind.name}:{issuer_key_id.hex()}:{partition}"


class Publisher:
    def __init__(
        self,
        registry: Registry,
        authority: Authority,
        snapshot_root: Path,
        clock: Clock,
        settings: ProfileSettings,
    ) -> None:
        snapshot_root.mkdir(parents=True, exist_ok=True)
        self._registry = registry
        self._authority = authority
        self._root = snapshot_root
        self._clock = clock
        self._settings = settings
        # One publish at a time: the periodic one and an operator's may coincide.
        self._lock = threading.Lock()

    def publish_if_changed(self) -> PublishedSnapshot | None:
        with self._lock:
            with self._registry.read() as tx:
                changed = tx.meta("published_mark") != tx.change_mark().encode()
            return self._publish_full() if changed else None

    def publish_full(self) -> PublishedSnapshot:
        """A full snapshot: every issuance record, one CRL per (kind, generation, partition)."""
        with self._lock:
            return self._publish_full()

    def _publish_full(self) -> PublishedSnapshot:
        now = self._clock.now()
        issuers = self._authority.issuers()
        ordinals = {r.key_id: i for i, r in enumerate(issuers)}
        records: list[bytes] = []
        entries: dict[tuple[CertKind, bytes, str], list[CrlEntry]] = defaultdict(list)
        # One read transaction: the records and the CRLs describe the same moment.
        with self._registry.read() as tx:
            event_sequence = tx.counter("event")
            mark = tx.change_mark()
            verifiers = tx.verifiers()
            for rec in tx.certificates():
                scope = (rec.kind, rec.issuer_key_id, rec.partition)
                bucket = entries[scope]  # every partition gets a CRL, even an empty one
                records.append(
                    encode_file_record(
                        rec.key,
                        rec.not_before,
                        rec.not_after,
                        rec.partition,
                        ordinals[rec.issuer_key_id],
                    )
                )
                if rec.loss is not None:
                    bucket.append(
                        CrlEntry(rec.serial, rec.loss.time, rec.loss.cause, rec.loss.reason)
                    )
        with self._registry.write() as wtx:
            sequence = wtx.next_counter("snapshot")
            numbers = {scope: wtx.next_counter(crl_counter(*scope)) for scope in entries}
        builder = SnapshotBuilder(self._root, sequence)
        try:
            builder.add_issuers([r.certificate for r in issuers])
            builder.add_verifiers(verifiers)
            builder.add_records(records)
            keys: dict[bytes, CertificateIssuerPrivateKeyTypes] = {}
            for (kind, key_id, partition), bucket in sorted(entries.items()):
                issuer = next(r for r in issuers if r.key_id == key_id)
                key = keys.get(key_id) or keys.setdefault(key_id, self._authority.key(issuer))
                crl = profiles.crl(
                    self._settings,
                    key,
                    issuer.certificate,
                    kind=kind,
                    partition=partition,
                    number=numbers[(kind, key_id, partition)],
                    this_update=now,
                    next_update=now + self._settings.crl_validity,
                    entries=bucket,
                )
                builder.add_crl(kind, partition, crl, numbers[(kind, key_id, partition)])
            signing_key, signer_cert = self._authority.snapshot_signer()
            path, manifest = builder.commit(
                type="full",
                base_sequence=None,
                created_at=now,
                event_sequence=event_sequence,
                issuer_key_ids=[r.key_id for r in issuers],
                signing_key=signing_key,
                signer_cert=signer_cert,
            )
        except BaseException:
            builder.abort()
            raise
        with self._registry.write() as wtx:
            wtx.set_meta("published_mark", mark.encode())
        log.info(
            "published full snapshot %d: %d records, %d CRLs",
            sequence,
            manifest.record_count,
            len(manifest.crls),
        )
        return PublishedSnapshot(sequence, path, len(manifest.crls), manifest.record_count)
