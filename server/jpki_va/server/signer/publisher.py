"""Publishing snapshots: registry state -> signed CRLs, records, data files and a manifest.

A full snapshot carries everything in retention; a delta carries what changed
since the previous snapshot, including the delta CRLs signed for it: one per
partition that lost a certificate since the previous snapshot (cumulative since that
partition's full CRL, RFC 5280 §5.2.4), or whose last delta CRL is past half its
validity. A partition's delta CRL is in the one snapshot it was signed for, so a
delta's size and the work each replica does with it follow what changed since the
previous snapshot, not since the full one. A delta is possible only while the issuer
generations, compromises and partitions are the ones of the last full snapshot;
otherwise the publisher makes a full one.

A publish takes its snapshot sequence and CRL numbers only when it commits: they are
read ahead, written into the signed files, and recorded in the registry in the same
write transaction that renames the finished snapshot into place. A publish that
fails (the HSM gone, the disk full) leaves no number used and no snapshot behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypedDict

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from jpki_va.core.clock import Clock
from jpki_va.core.domain import CertKind, Link, LinkType, Verifier
from jpki_va.server.base.faults import fault_point
from jpki_va.server.base.private_files import private_dir
from jpki_va.server.base.progress import Progress
from jpki_va.server.law.consent_scope import covers
from jpki_va.server.law.correspondence import holder_links
from jpki_va.server.law.issuer_compromise import Compromise, Generation, announcement
from jpki_va.server.law.retention import RetentionPolicy
from jpki_va.server.model.registry_values import (
    CertificateRecord,
    ConsentChange,
    IssuerRecord,
    LossEvent,
    Scope,
)
from jpki_va.server.pki import crl_profile, crl_stream
from jpki_va.server.pki.announcement import sign_announcement
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.pki.crl_profile import CrlEntry
from jpki_va.server.registry.transactions import Registry, RegistryTxn
from jpki_va.server.signer.authority import Authority
from jpki_va.server.signer.full_snapshot import FullContent
from jpki_va.server.signer.link_process import LinkProcess
from jpki_va.server.signer.losses_since_full import LossesSinceFull
from jpki_va.server.snapshot.data_files import consent_line, link_rows, signing_record_line
from jpki_va.server.snapshot.manifest import (
    CONSENTS,
    SIGNING_RECORDS,
    CrlInfo,
    crl_relpath,
    snapshot_dirname,
)
from jpki_va.server.snapshot.record_format import encode_file_record
from jpki_va.server.snapshot.store import LocalStore, SnapshotStore, StoreUnavailable
from jpki_va.server.snapshot.writer import SnapshotBuilder

log = logging.getLogger(__name__)

_STATE = "publisher_state"
# Below this many certificates the links pass takes less than a second process costs
# to start (about a second: a fresh interpreter and its imports).
LINK_PROCESS_FROM = 250_000
# Where versions that carried unchanged delta CRLs into every delta kept the last
# ones; removed on start, as nothing reads it now.
_CARRIED = ".delta-crls"


@dataclass(frozen=True)
class PublishedSnapshot:
    sequence: int
    path: Path
    crl_count: int
    record_count: int
    type: Literal["full", "delta"] = "full"
    event_count: int = 0


def crl_counter(kind: CertKind, issuer_key_id: bytes, partition: str) -> str:
    """Registry counter of a partition's CRL numbers (shared by full and delta CRLs)."""
    return f"crl:{kind.name}:{issuer_key_id.hex()}:{partition}"


def _scope_name(scope: Scope) -> str:
    kind, kid, partition = scope
    return f"{kind.name}:{kid.hex()}:{partition}"


def _scope_of(name: str) -> Scope:
    """The scope `_scope_name` names."""
    kind, kid, partition = name.split(":")
    return CertKind[kind], bytes.fromhex(kid), partition


class _SignedDelta(TypedDict):
    next_update: str  # ISO 8601
    entries: int


@dataclass
class _State:
    """What the last snapshots were, kept in the registry so deltas survive a restart."""

    full_sequence: int
    full_at: datetime
    full_event_sequence: int
    issuer_key_ids: list[str]
    compromise_count: int
    crl_base: dict[str, int]  # scope name -> the full CRL's number
    last_sequence: int
    event_sequence: int
    issued: int
    consent_sequence: int
    mark: str
    last_at: datetime | None = None  # when the last snapshot (full or delta) was made
    # scope name -> the last delta CRL signed for it since the full. Absent from states
    # written before it was kept: then every scope with losses is signed anew once.
    deltas: dict[str, _SignedDelta] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        data = dict(self.__dict__)
        data["full_at"] = self.full_at.isoformat()
        data["last_at"] = None if self.last_at is None else self.last_at.isoformat()
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def load(cls, tx: RegistryTxn) -> _State | None:
        raw = tx.meta(_STATE)
        if raw is None:
            return None
        data = json.loads(raw)
        data["full_at"] = datetime.fromisoformat(data["full_at"])
        # Absent in states written before it was kept: the full snapshot's time.
        last_at = data.get("last_at")
        data["last_at"] = data["full_at"] if last_at is None else datetime.fromisoformat(last_at)
        return cls(**data)


@dataclass
class _Content:
    """What one snapshot carries, gathered in one read transaction."""

    records: list[bytes] = field(default_factory=list)
    events: list[LossEvent] = field(default_factory=list)
    links: set[Link] = field(default_factory=set)
    signing_records: dict[int, dict[str, Any]] = field(default_factory=dict)
    consents: list[dict[str, Any]] = field(default_factory=list)
    verifiers: list[Verifier] = field(default_factory=list)  # the whole registry, always


def _add_links(builder: SnapshotBuilder, content: FullContent, links: LinkProcess | None) -> None:
    """The links file: the second process's, or, without one or if it failed, this one's."""
    if links is not None and links.result() is not None:
        builder.adopt_links()
    else:
        builder.add_links(content.link_rows())


class Publisher:
    def __init__(
        self,
        registry: Registry,
        authority: Authority,
        snapshot_root: Path,
        clock: Clock,
        settings: ProfileSettings,
        retention: RetentionPolicy | None = None,
        store: SnapshotStore | None = None,
        *,
        link_process_from: int | None = LINK_PROCESS_FROM,
    ) -> None:
        private_dir(snapshot_root)
        # Snapshots are sealed in `snapshot_root`, then published to the store (the
        # same directory by default: then publishing is the rename).
        self._store = store or LocalStore(snapshot_root)
        self._registry = registry
        self._authority = authority
        self._root = snapshot_root
        self._clock = clock
        self._settings = settings
        self._retention = retention or RetentionPolicy()
        self._retention.check(settings.validity)
        # From this many certificates issued, a full publish writes its links in a
        # second process (signer/link_process.py); None: always in this one.
        self._link_process_from = link_process_from
        # One publish at a time: the periodic one and an operator's may coincide.
        self._lock = threading.Lock()
        self._losses = LossesSinceFull(self._retention)
        shutil.rmtree(snapshot_root / _CARRIED, ignore_errors=True)

    # entry points ---------------------------------------------------------------------
    @property
    def retention(self) -> RetentionPolicy:
        return self._retention

    def publish_full(self) -> PublishedSnapshot:
        """A full snapshot: every record in retention, one CRL per partition."""
        with self._lock:
            return self._publish_full()

    def publish_delta_or_full(self) -> PublishedSnapshot:
        with self._lock:
            return self._publish_delta() or self._publish_full()

    def publish_scheduled(self, full_interval: timedelta) -> PublishedSnapshot | None:
        """A full snapshot when one is due, else a delta if anything changed."""
        with self._lock:
            with self._registry.read() as tx:
                state = _State.load(tx)
            if state is None or self._clock.now() - state.full_at >= full_interval:
                return self._publish_full()
            if not self._changed():
                return None
            return self._publish_delta() or self._publish_full()

    def _changed(self) -> bool:
        with self._registry.read() as tx:
            state = _State.load(tx)
            return state is None or state.mark != tx.change_mark()

    def last_published_at(self) -> datetime | None:
        """When the last snapshot was published (None: never)."""
        with self._registry.read() as tx:
            state = _State.load(tx)
        return None if state is None else state.last_at

    def check_signer(self) -> None:
        """Raise what the next publish would meet if the snapshot key cannot be used."""
        self._authority.snapshot_signer()

    # numbers ------------------------------------------------------------------------------
    def _next_sequence(self, tx: RegistryTxn) -> int:
        """The sequence the next snapshot takes, if it commits.

        Above every snapshot in the store as well: one that was committed but whose
        registry commit then failed, and could not be withdrawn, is never overwritten;
        nor is one a signer restored from an older backup of the registry never knew.
        """
        counter = tx.counter("snapshot")
        return max([counter, *self._store.sequences(after=counter)]) + 1

    @staticmethod
    def _take(wtx: RegistryTxn, expected: dict[str, int]) -> None:
        """Record the numbers a snapshot used, as read ahead (counter name -> value)."""
        for name, value in expected.items():
            if wtx.counter(name) >= value:
                # Only this publisher takes them, one publish at a time: a bug if seen.
                raise RuntimeError(f"counter {name} moved past {value} during a publish")
            wtx.set_counter(name, value)

    def _commit(self, builder: SnapshotBuilder, numbers: dict[str, int], state: _State) -> Path:
        """Publish the sealed snapshot and record its numbers and state, together.

        Its files go to the store first, where no reader looks yet; the commit (the
        manifest) inside the registry's write transaction, so a failed commit records
        nothing, and a snapshot the registry did not take is withdrawn.
        """
        committed = False
        try:
            self._store.upload(builder.sequence, builder.path)
            with self._registry.write() as wtx:
                self._take(wtx, numbers)
                wtx.set_meta(_STATE, state.to_bytes())
                self._store.commit(builder.sequence, builder.path)
                committed = True
                fault_point("publish.committed")
        except BaseException:
            if committed:
                self._store.withdraw(builder.sequence)  # the registry did not take it
            builder.abort()
            raise
        builder.abort()  # what is left of it here: nothing once renamed into the root
        fault_point("publish.state-saved")
        return self._root / snapshot_dirname(builder.sequence)

    # retention --------------------------------------------------------------------------
    def _retained(self, record: CertificateRecord, now: datetime) -> bool:
        return self._retention.issuance_retained(record.kind, record.not_before, now)

    # full -------------------------------------------------------------------------------
    def _publish_full(self) -> PublishedSnapshot:
        now = self._clock.now()
        # First: without its key the whole gather below would be for nothing.
        signing_key, signer_cert = self._authority.snapshot_signer()
        issuers = self._authority.issuers()
        with self._registry.read() as tx:
            sequence = self._next_sequence(tx)
        builder = SnapshotBuilder(self._root, sequence)
        links: LinkProcess | None = None
        fault_point("publish.begun")
        try:
            builder.add_issuers([r.certificate for r in issuers])
            # One read transaction: every file describes the same moment. The records,
            # events and links stream from the registry into the builder's files.
            with self._registry.read() as tx:
                compromises = tx.compromises()
                event_sequence = tx.counter("event")
                issued = tx.counter("issued")
                consent_sequence = tx.counter("consent")
                mark = tx.change_mark()
                content = FullContent(tx, issuers, self._retention, now, scratch=self._root)
                links = self._start_link_process(tx, builder, now, issued)
                # Of every certificate issued: the records gather is most of a full publish.
                with Progress(f"full snapshot {sequence}", issued) as records:
                    builder.add_records(records.track(content.records()))
                event_count = builder.add_events(content.events())
                _add_links(builder, content, links)
                signing_records, consents = content.signing_records_and_consents()
                builder.add_jsonl(SIGNING_RECORDS, signing_records)
                builder.add_jsonl(CONSENTS, consents)
                builder.add_verifiers(tx.verifiers())
                entries = content.crl_entries()
                numbers = {scope: tx.counter(crl_counter(*scope)) + 1 for scope in entries}
                arl_number = tx.counter("arl") + 1
            self._add_crls(builder, issuers, entries, numbers, now, None)
            # Each scope's empty delta, under the full CRL's number (RFC 5280 §5.2.3).
            empty = {scope: () for scope in entries}
            self._add_crls(builder, issuers, empty, numbers, now, numbers, empty_deltas=True)
            self._add_arl(builder, issuers, compromises, arl_number, now)
            if compromises:
                self._add_announcement(builder, issuers, compromises, now)
            fault_point("publish.files-written")
            manifest = builder.seal(
                type="full",
                base_sequence=None,
                created_at=now,
                event_sequence=event_sequence,
                issuer_key_ids=[r.key_id for r in issuers],
                signing_key=signing_key,
                signer_cert=signer_cert,
                compromises=sorted(compromises.values(), key=lambda c: c.key_id),
            )
        except BaseException:
            if links is not None:
                links.cancel()
            builder.abort()
            raise
        state = _State(
            full_sequence=sequence,
            full_at=now,
            full_event_sequence=event_sequence,
            issuer_key_ids=[r.key_id.hex() for r in issuers],
            compromise_count=len(compromises),
            crl_base={_scope_name(s): n for s, n in numbers.items()},
            last_sequence=sequence,
            event_sequence=event_sequence,
            issued=issued,
            consent_sequence=consent_sequence,
            mark=mark,
            last_at=now,
        )
        taken = {
            "snapshot": sequence,
            "arl": arl_number,
            **{crl_counter(*s): n for s, n in numbers.items()},
        }
        path = self._commit(builder, taken, state)
        self._prune(now)
        log.info(
            "published full snapshot %d: %d records, %d CRLs",
            sequence,
            manifest.record_count,
            len(manifest.crls),
        )
        return PublishedSnapshot(
            sequence, path, len(manifest.crls), manifest.record_count, "full", event_count
        )

    def _start_link_process(
        self, tx: RegistryTxn, builder: SnapshotBuilder, now: datetime, issued: int
    ) -> LinkProcess | None:
        """The links pass in a second process, for a registry big enough to gain by it."""
        if self._link_process_from is None or issued < self._link_process_from:
            return None
        return LinkProcess(
            self._registry.path,
            tx.transaction_id,
            self._retention,
            now,
            builder.links_path,
            self._root,
        )

    def _add_arl(
        self,
        builder: SnapshotBuilder,
        issuers: list[IssuerRecord],
        compromises: dict[bytes, Compromise],
        number: int,
        now: datetime,
    ) -> None:
        root = self._authority.root()
        arl = crl_profile.authority_revocation_list(
            self._settings,
            self._authority.key(root),
            root.certificate,
            number=number,
            this_update=now,
            next_update=now + self._settings.crl_validity,
            revoked=[
                (r.certificate.serial_number, compromises[r.key_id].time)
                for r in issuers
                if r.key_id in compromises
            ],
        )
        builder.add_arl(arl, number)

    def _add_announcement(
        self,
        builder: SnapshotBuilder,
        issuers: list[IssuerRecord],
        compromises: dict[bytes, Compromise],
        now: datetime,
    ) -> None:
        """The public announcement (第15条第3項 and its twins), signed by the snapshot key."""
        root = self._authority.root()
        generations = {
            r.key_id: Generation(
                r.certificate.subject.rfc4514_string(),
                r.certificate.serial_number,
                r.certificate.not_valid_before_utc,
                r.certificate.not_valid_after_utc,
            )
            for r in issuers
            if r.key_id in compromises
        }
        content = announcement(
            list(compromises.values()),
            generations,
            published_at=now,
            arl_url=self._settings.arl_url(root.key_id),
        )
        raw = json.dumps(content, ensure_ascii=False, indent=1).encode() + b"\n"
        key, cert = self._authority.snapshot_signer()
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise TypeError("the snapshot key must be RSA or EC to sign the announcement")
        builder.add_announcement(sign_announcement(raw, key, cert))

    # delta ------------------------------------------------------------------------------
    def _publish_delta(self) -> PublishedSnapshot | None:
        """A delta after the last snapshot, or None when only a full one will do."""
        now = self._clock.now()
        signing_key, signer_cert = self._authority.snapshot_signer()
        issuers = self._authority.issuers()
        with self._registry.read() as tx:
            state = _State.load(tx)
            sequence = self._next_sequence(tx)
            if (
                state is None
                or state.issuer_key_ids != [r.key_id.hex() for r in issuers]
                or state.compromise_count != len(tx.compromises())
                # A snapshot after the state's last one is on disk: a publish killed
                # between its rename and the registry's commit. Responders may hold it,
                # so a delta on the state's last one would not follow theirs.
                or sequence != state.last_sequence + 1
            ):
                return None
            event_sequence = tx.counter("event")
            issued = tx.counter("issued")
            consent_sequence = tx.counter("consent")
            mark = tx.change_mark()
            content = self._gather_delta(tx, state, issuers, now)
            if content is None:
                return None
            compromises = tx.compromises()
            to_sign = self._delta_crls_to_sign(state, content, now)
            numbers = {scope: tx.counter(crl_counter(*scope)) + 1 for scope in to_sign}
        builder = SnapshotBuilder(self._root, sequence)
        fault_point("publish.begun")
        try:
            builder.add_issuers([r.certificate for r in issuers])
            builder.add_records(content.records)
            bases = {s: state.crl_base[_scope_name(s)] for s in to_sign}
            self._add_crls(builder, issuers, to_sign, numbers, now, bases)
            self._add_data(builder, content)
            if compromises:  # the same as in its full snapshot: every snapshot has it
                self._add_announcement(builder, issuers, compromises, now)
            fault_point("publish.files-written")
            manifest = builder.seal(
                type="delta",
                base_sequence=state.full_sequence,
                previous_sequence=state.last_sequence,
                created_at=now,
                event_sequence=event_sequence,
                issuer_key_ids=[r.key_id for r in issuers],
                signing_key=signing_key,
                signer_cert=signer_cert,
            )
        except BaseException:
            builder.abort()
            raise
        state.last_sequence = sequence
        state.event_sequence = event_sequence
        state.issued = issued
        state.consent_sequence = consent_sequence
        state.mark = mark
        state.last_at = now
        _, next_update = self._crl_times(now)
        for scope, entries in to_sign.items():
            state.deltas[_scope_name(scope)] = _SignedDelta(
                next_update=next_update.isoformat(), entries=len(entries)
            )
        taken = {"snapshot": sequence, **{crl_counter(*s): n for s, n in numbers.items()}}
        path = self._commit(builder, taken, state)
        log.info(
            "published delta snapshot %d on %d: %d new records, %d losses, %d delta CRLs",
            sequence,
            state.full_sequence,
            manifest.record_count,
            len(content.events),
            len(manifest.crls),
        )
        return PublishedSnapshot(
            sequence, path, len(manifest.crls), manifest.record_count, "delta", len(content.events)
        )

    def _delta_crls_to_sign(
        self, state: _State, content: _Content, now: datetime
    ) -> dict[Scope, list[CrlEntry]]:
        """The scopes whose delta CRL this delta signs, with their entries since the full.

        A delta CRL is cumulative since its full CRL, so one whose scope lost nothing
        since it was signed would be signed again with the same entries. It is left
        out instead, and replicas keep serving the one an earlier delta brought: a
        delta's signatures, bytes and replica work follow the scopes that changed in
        it, not every scope changed since the full (by evening, most partitions).
        Signed anew: a scope that lost a certificate since the previous snapshot, one
        whose entries differ from its last delta CRL's (one left with its retention
        period, or all did: then an empty delta CRL), and one past half its validity,
        so none nears its nextUpdate.
        """
        changed = {e.scope for e in content.events}
        scopes = {*self._losses.scopes(), *(_scope_of(name) for name in state.deltas)}
        to_sign: dict[Scope, list[CrlEntry]] = {}
        for scope in scopes:
            last = state.deltas.get(_scope_name(scope))
            if (
                scope in changed
                or last is None
                # Without a loss since it was signed, entries only leave: a count says it.
                or last["entries"] != self._losses.count(scope)
                or datetime.fromisoformat(last["next_update"]) - now
                < self._settings.crl_validity / 2
            ):
                to_sign[scope] = self._losses.entries(scope)
        return to_sign

    def _gather_delta(
        self, tx: RegistryTxn, state: _State, issuers: list[IssuerRecord], now: datetime
    ) -> _Content | None:
        ordinals = {r.key_id: i for i, r in enumerate(issuers)}
        # Small: the whole verifier registry goes in every delta, so a change of roles
        # reaches the responder within one delta interval.
        content = _Content(verifiers=tx.verifiers())
        new_records = sorted(
            (r for r in tx.issued_since(state.issued) if self._retained(r, now)),
            key=lambda r: r.key,
        )
        for rec in new_records:
            if _scope_name((rec.kind, rec.issuer_key_id, rec.partition)) not in state.crl_base:
                return None  # a new partition needs its full CRL first
            content.records.append(_record(rec, ordinals))
        # Delta CRLs are cumulative since the full CRLs: every retained loss since it.
        self._losses.read(tx, state.full_event_sequence, now)
        for event in tx.events_since(state.event_sequence):
            if _scope_name(event.scope) not in state.crl_base:
                return None  # cannot happen while new partitions force a full
            lost = tx.certificate(event.kind, event.serial)
            if lost is not None and self._retained(lost, now):
                content.events.append(event)
        self._delta_links(tx, new_records, content)
        self._delta_consents(tx, state, new_records, content)
        return content

    @staticmethod
    def _delta_links(
        tx: RegistryTxn, new_records: list[CertificateRecord], content: _Content
    ) -> None:
        """Links that involve a certificate issued since the previous snapshot."""
        new_keys = {(r.kind, r.serial) for r in new_records}
        for rec in new_records:
            for link in holder_links(tx.holder_certificates(rec.resident_code)):
                if (link.a_kind, link.a_serial) in new_keys or (
                    link.b_kind,
                    link.b_serial,
                ) in new_keys:
                    content.links.add(link)
            for old in tx.holder_certificates(rec.resident_code):
                if tx.renewed_by(old.kind, old.serial) == (rec.kind, rec.serial):
                    content.links.add(
                        Link(LinkType.RENEWAL, old.kind, old.serial, rec.kind, rec.serial)
                    )

    @staticmethod
    def _delta_consents(
        tx: RegistryTxn,
        state: _State,
        new_records: list[CertificateRecord],
        content: _Content,
    ) -> None:
        """Consent changes since the previous snapshot, and consents to new records."""
        changes: dict[tuple[str, str], ConsentChange] = {}
        for change in tx.consent_changes_since(state.consent_sequence):
            changes[(change.resident_code, change.verifier)] = change  # the last one counts
        for code, verifier in changes:
            # The consent as it stands: what it covers is given, everything else taken
            # back (a withdrawal, or a new grant with another scope), in this delta.
            consent = tx.consent(code, verifier)
            for rec in tx.holder_certificates(code):
                if not rec.kind.is_signing:
                    continue
                granted = consent is not None and covers(consent, rec)
                if granted:
                    content.signing_records[rec.serial] = signing_record_line(rec)
                content.consents.append(consent_line(rec, verifier, granted))
        for rec in new_records:
            if not rec.kind.is_signing:
                continue
            for consent in tx.consents(rec.resident_code):
                if covers(consent, rec) and (rec.resident_code, consent.verifier) not in changes:
                    content.signing_records[rec.serial] = signing_record_line(rec)
                    content.consents.append(consent_line(rec, consent.verifier, True))

    # files ------------------------------------------------------------------------------
    def _add_crls(
        self,
        builder: SnapshotBuilder,
        issuers: list[IssuerRecord],
        entries: Mapping[Scope, Iterable[CrlEntry]],
        numbers: dict[Scope, int],
        now: datetime,
        bases: dict[Scope, int] | None,
        *,
        empty_deltas: bool = False,
    ) -> None:
        keys: dict[bytes, CertificateIssuerPrivateKeyTypes] = {}
        this_update, next_update = self._crl_times(now)
        for scope, bucket in sorted(entries.items()):
            kind, key_id, partition = scope
            issuer = next(r for r in issuers if r.key_id == key_id)
            key = keys.get(key_id) or keys.setdefault(key_id, self._authority.key(issuer))
            base = None if bases is None else bases[scope]
            # crlstream: the profile of crl_profile.crl, byte for byte, at national scale.
            der = crl_stream.crl_der(
                self._settings,
                key,
                issuer.certificate,
                kind=kind,
                partition=partition,
                number=numbers[scope],
                this_update=this_update,
                next_update=next_update,
                entries=sorted(bucket, key=lambda e: e.serial),
                delta_base=base,
            )
            info = CrlInfo(
                file=crl_relpath(kind, key_id, partition, delta=base is not None),
                kind=kind,
                issuer_key_id=key_id,
                partition=partition,
                number=numbers[scope],
                this_update=this_update,
                next_update=next_update,
                delta_base=base,
            )
            if empty_deltas:
                builder.add_empty_delta_der(info, der)
            else:
                builder.add_crl_der(info, der)

    def _crl_times(self, now: datetime) -> tuple[datetime, datetime]:
        """thisUpdate and nextUpdate of the CRLs signed at `now`: DER times are whole
        seconds, and the manifest states what the CRLs say."""
        this_update = now.replace(microsecond=0)
        return this_update, this_update + self._settings.crl_validity

    @staticmethod
    def _add_data(builder: SnapshotBuilder, content: _Content) -> None:
        builder.add_verifiers(content.verifiers)
        builder.add_events(content.events)
        builder.add_links(sorted(row for link in content.links for row in link_rows(link)))
        builder.add_jsonl(SIGNING_RECORDS, _by_serial(content.signing_records))
        builder.add_jsonl(CONSENTS, content.consents)

    # CRL file retention -------------------------------------------------------------------
    def _prune(self, now: datetime) -> None:
        """Remove snapshots (CRL files) past retention, never the live full and its deltas.

        A store that cannot be reached now is pruned at a later full snapshot.
        """
        try:
            sequences = self._store.sequences()
        except StoreUnavailable as exc:
            log.warning("cannot prune the snapshot store now: %s", exc)
            return
        if not sequences:
            return
        with self._registry.read() as tx:
            state = _State.load(tx)
        keep_from = state.full_sequence if state is not None else sequences[-1]
        for seq in sequences:
            if seq >= keep_from:
                break
            try:
                created = datetime.fromisoformat(
                    json.loads(self._store.manifest(seq))["created_at"]
                )
            except (StoreUnavailable, ValueError, KeyError):
                continue
            # A snapshot holds the CRL files of every kind: kept for the longest period.
            if now >= created + self._retention.longest_crl_file():
                try:
                    self._store.withdraw(seq)
                except StoreUnavailable as exc:
                    log.warning("cannot remove snapshot %d now: %s", seq, exc)
                    return
                log.info(
                    "removed snapshot %s: past the retention of CRL files", snapshot_dirname(seq)
                )


def _by_serial(lines: dict[int, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for serial in sorted(lines):
        yield lines[serial]


def _record(rec: CertificateRecord, ordinals: dict[bytes, int]) -> bytes:
    """The snapshot's binary issuance record of `rec`."""
    return encode_file_record(
        rec.key, rec.not_before, rec.not_after, rec.partition, ordinals[rec.issuer_key_id]
    )
