"""The streaming full publish carries exactly what a straightforward gather would.

`reference_content` below is the in-memory gather the publisher used before it
streamed (every record decoded with its effective loss, sets of retained keys, one
set of links). A registry with every case (losses of every cause, cascades,
renewals, consents, expired-but-retained records, records and losses past
retention, and then an issuer compromise) is published by the real Publisher with
the HSM, and every file of the snapshot is compared with the reference: data files
byte for byte, CRLs by their signed part (signatures are randomised).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from jpki_va.core.clock import FixedClock
from jpki_va.core.domain import CertKind, Link, LinkType, Loss, LossCause, Role, Verifier
from jpki_va.hsm import Hsm
from jpki_va.server.law.correspondence import holder_links
from jpki_va.server.law.issuer_compromise import CARD_OF, Compromise
from jpki_va.server.law.loss_recording import DEFAULT_REASON
from jpki_va.server.law.retention import RetentionPolicy
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import (
    CertificateRecord,
    Consent,
    IssuerRecord,
    LossEvent,
    LossTrigger,
)
from jpki_va.server.pki import crl_stream
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.pki.crl_profile import CrlEntry
from jpki_va.server.registry.transactions import Registry, RegistryTxn
from jpki_va.server.signer import external_sort
from jpki_va.server.signer.authority import Authority
from jpki_va.server.signer.external_sort import ExternalSort
from jpki_va.server.signer.full_snapshot import FullContent
from jpki_va.server.signer.link_process import LinkProcess
from jpki_va.server.signer.publisher import Publisher
from jpki_va.server.snapshot.data_files import (
    LINKS_MAGIC,
    consent_line,
    link_rows,
    signing_record_line,
)
from jpki_va.server.snapshot.manifest import (
    ANNOUNCEMENT,
    ARL,
    CONSENTS,
    MANIFEST,
    SIGNATURE,
    SIGNER_CERT,
    SIGNING_RECORDS,
    Manifest,
)
from jpki_va.server.snapshot.record_format import encode_file_record
from jpki_va.server.snapshot.writer import SnapshotBuilder
from tests.support import bootstrapped_registry

YEAR = timedelta(days=365)
RETENTION = RetentionPolicy(issuance_record=6 * YEAR, loss_record=YEAR, crl_file=YEAR)
PARTITIONS = ("011002", "131016", "271004")


@dataclass
class Reference:
    records: list[bytes] = field(default_factory=list)
    entries: dict[tuple[CertKind, bytes, str], list[CrlEntry]] = field(default_factory=dict)
    events: list[LossEvent] = field(default_factory=list)
    links: set[Link] = field(default_factory=set)
    signing_records: dict[int, dict[str, Any]] = field(default_factory=dict)
    consents: list[dict[str, Any]] = field(default_factory=list)
    verifiers: list[Verifier] = field(default_factory=list)


def reference_content(
    tx: RegistryTxn, issuers: list[IssuerRecord], retention: RetentionPolicy, now: datetime
) -> Reference:
    ordinals = {r.key_id: i for i, r in enumerate(issuers)}
    compromises = tx.compromises()
    content = Reference(verifiers=tx.verifiers())
    entries: dict[tuple[CertKind, bytes, str], list[CrlEntry]] = defaultdict(list)
    retained: set[tuple[CertKind, int]] = set()
    losses_kept: set[tuple[CertKind, int]] = set()
    holders: dict[str, list[CertificateRecord]] = defaultdict(list)
    consenting: dict[str, list[str]] = defaultdict(list)
    for consent in tx.consents():
        if consent.in_effect:
            consenting[consent.resident_code].append(consent.verifier)
    for rec in tx.certificates():
        if not retention.issuance_retained(rec.kind, rec.not_before, now):
            continue
        retained.add((rec.kind, rec.serial))
        holders[rec.resident_code].append(rec)
        content.records.append(
            encode_file_record(
                rec.key, rec.not_before, rec.not_after, rec.partition, ordinals[rec.issuer_key_id]
            )
        )
        if rec.kind.is_signing and rec.resident_code in consenting:
            content.signing_records[rec.serial] = signing_record_line(rec)
            for verifier in consenting[rec.resident_code]:
                content.consents.append(consent_line(rec, verifier, True))
        loss_kept = rec.loss is not None and retention.loss_retained(
            rec.kind, rec.loss.cause, rec.loss.time, rec.not_after, now
        )
        if loss_kept:
            losses_kept.add((rec.kind, rec.serial))
        if rec.issuer_key_id in compromises:
            continue
        bucket = entries[(rec.kind, rec.issuer_key_id, rec.partition)]
        if rec.loss is not None and loss_kept:
            bucket.append(CrlEntry(rec.serial, rec.loss.time, rec.loss.cause, rec.loss.reason))
    content.entries = dict(entries)
    content.events = [e for e in tx.events_since(0) if (e.kind, e.serial) in losses_kept]
    for records in holders.values():
        content.links |= holder_links(records)
    for old, new in tx.renewals():
        if old in retained and new in retained:
            content.links.add(Link(LinkType.RENEWAL, *old, *new))
    return content


class _Data:
    """Issues certificate records with deterministic, varied attributes."""

    def __init__(self, tx: RegistryTxn, issuers: dict[CertKind, IssuerRecord], now: datetime):
        self.tx, self.issuers, self.now = tx, issuers, now
        self.rng = random.Random(20240601)
        self.serial = 1 << 62

    def issue(
        self, kind: CertKind, code: str, not_before: datetime, card: CertificateRecord | None
    ) -> CertificateRecord:
        self.serial += self.rng.randrange(1, 1 << 40)
        record = CertificateRecord(
            kind=kind,
            serial=self.serial,
            issuer_key_id=self.issuers[kind].key_id,
            resident_code=code,
            partition=PARTITIONS[int(code) % len(PARTITIONS)],
            holder=Holder("山田 太郎", f"東京都 {code[-3:]}", "1980-01-02", "男"),
            not_before=not_before,
            not_after=not_before + 5 * YEAR,
            certificate_der=b"",
            card_serial=None if card is None else card.serial,
        )
        self.tx.add_certificate(record)
        return record

    def lose(
        self,
        record: CertificateRecord,
        cause: LossCause,
        at: datetime,
        trigger: LossTrigger | None = None,
    ) -> None:
        self.tx.record_loss(
            record.kind, record.serial, Loss(at, cause, DEFAULT_REASON[cause]), trigger=trigger
        )

    def population(self, holders: int) -> None:
        rng, now = self.rng, self.now
        causes = [LossCause.HOLDER_REQUEST, LossCause.RESIDENT_CHANGE, LossCause.RECORD_ERROR]
        for h in range(holders):
            code = f"{10_000_000_000 + h:011d}"
            # 0..7 years ago: some past the 6-year issuance retention, some expired
            # (5-year validity) but retained.
            issued = now - timedelta(seconds=rng.randrange(int(7 * YEAR.total_seconds())))
            issued = issued.replace(microsecond=0)
            sign = self.issue(CertKind.CARD_SIGN, code, issued, None)
            auth = self.issue(CertKind.CARD_AUTH, code, issued, None)
            mobile: dict[CertKind, CertificateRecord] = {}
            if h % 3 == 0:
                later = issued + timedelta(days=rng.randrange(1, 300))
                mobile[CertKind.MOBILE_SIGN] = self.issue(CertKind.MOBILE_SIGN, code, later, sign)
                if h % 2 == 0:
                    mobile[CertKind.MOBILE_AUTH] = self.issue(
                        CertKind.MOBILE_AUTH, code, later, auth
                    )
            if h % 4 == 1:  # an address change ends the signing one; a renewal follows
                lost_at = issued + timedelta(days=rng.randrange(301, 1500), microseconds=h)
                lost_at = min(lost_at, now - timedelta(hours=1))
                self.lose(sign, LossCause.RESIDENT_CHANGE, lost_at)
                renewed = self.issue(CertKind.CARD_SIGN, code, lost_at.replace(microsecond=0), None)
                self.tx.put_renewal(sign, renewed)
            elif h % 4 == 2:  # one of the card causes ends both card certificates
                cause = causes[h % len(causes)]
                lost_at = min(
                    issued + timedelta(days=rng.randrange(301, 2000)), now - timedelta(hours=1)
                )
                for card in (sign, auth):
                    self.lose(card, cause, lost_at)
                    for kind, record in mobile.items():  # 第16条の13: the cascade
                        if CARD_OF[kind] is card.kind:
                            self.lose(
                                record,
                                LossCause.CARD_CERT_LOST_EFFECT,
                                lost_at,
                                LossTrigger(card.kind, card.serial, cause),
                            )
            elif h % 9 == 3:
                self.lose(auth, LossCause.ISSUER_KEY_COMPROMISE, now - timedelta(days=h))
            if h % 5 == 0:
                self.tx.set_consent(Consent(code, "bank-a", now - timedelta(days=3), None))
                if h % 10 == 0:
                    self.tx.set_consent(Consent(code, "city-b", now - timedelta(days=2), None))
            elif h % 7 == 0:  # granted, then withdrawn
                self.tx.set_consent(
                    Consent(code, "bank-a", now - timedelta(days=3), now - timedelta(days=1))
                )
        self.tx.put_verifier(
            Verifier(
                id="bank-a",
                roles=frozenset({Role.SIGNING_VERIFIER}),
                cert_fingerprints=(b"\x01" * 32,),
                agreement="A-1",
            )
        )


def _snapshot_files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _compare(
    publisher: Publisher,
    registry: Registry,
    authority: Authority,
    now: datetime,
    out: Path,
) -> Reference:
    published = publisher.publish_full()
    issuers = authority.issuers()
    with registry.read() as tx:
        reference = reference_content(tx, issuers, RETENTION, now)
    streamed = _snapshot_files(published.path)
    manifest = Manifest.from_bytes(streamed[MANIFEST])
    # The reference's data files, written by the same builder calls.
    builder = SnapshotBuilder(out, published.sequence)
    builder.add_issuers([r.certificate for r in issuers])
    builder.add_records(reference.records)
    builder.add_verifiers(reference.verifiers)
    builder.add_events(reference.events)
    builder.add_links(sorted(row for link in reference.links for row in link_rows(link)))
    builder.add_jsonl(
        SIGNING_RECORDS, [reference.signing_records[s] for s in sorted(reference.signing_records)]
    )
    builder.add_jsonl(CONSENTS, reference.consents)
    ref_dir = next(out.glob(f".tmp-{published.sequence}-*"))
    expected = _snapshot_files(ref_dir)
    builder.abort()
    for name, data in expected.items():
        assert streamed[name] == data, name
    # CRLs: the same files, each with the reference's entries under the same frame.
    crls = {info.file: info for info in manifest.crls}
    assert len(crls) == len(reference.entries)
    keys = {r.key_id: r for r in issuers}
    for (kind, key_id, partition), bucket in reference.entries.items():
        info = next(
            i
            for i in manifest.crls
            if (i.kind, i.issuer_key_id, i.partition) == (kind, key_id, partition)
        )
        issuer = keys[key_id]
        der = crl_stream.crl_der(
            publisher_settings(),
            authority.key(issuer),
            issuer.certificate,
            kind=kind,
            partition=partition,
            number=info.number,
            this_update=info.this_update,
            next_update=info.next_update,
            entries=sorted(bucket, key=lambda e: e.serial),
        )
        got = x509.load_der_x509_crl(streamed[info.file])
        assert got.tbs_certlist_bytes == x509.load_der_x509_crl(der).tbs_certlist_bytes
    # Each scope's empty delta, under its full CRL's number.
    empty = {info.file: info for info in manifest.empty_deltas}
    assert {
        (i.kind, i.issuer_key_id, i.partition, i.number, i.delta_base) for i in empty.values()
    } == {(i.kind, i.issuer_key_id, i.partition, i.number, i.number) for i in crls.values()}
    for name in empty:
        assert len(x509.load_der_x509_crl(streamed[name])) == 0
    # Nothing else: the manifest lists the data files, the reference's, the CRLs with
    # their empty deltas, the root's ARL (and the public announcement once a
    # compromise is announced).
    announcement = {ANNOUNCEMENT} if manifest.compromises else set()
    assert set(manifest.files) == set(expected) | set(crls) | set(empty) | {ARL} | announcement
    assert set(streamed) == set(manifest.files) | {MANIFEST, SIGNATURE, SIGNER_CERT}
    assert manifest.record_count == len(reference.records)
    assert published.event_count == len(reference.events)
    return reference


def publisher_settings() -> ProfileSettings:
    return ProfileSettings(base_url="http://127.0.0.1:8080")


@pytest.fixture(scope="module")
def world(
    hsm: Hsm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Registry, Authority, FixedClock]]:
    root = tmp_path_factory.mktemp("full-snapshot")
    clock = FixedClock(datetime(2031, 4, 1, 9, 30, tzinfo=UTC))
    registry = bootstrapped_registry(hsm, root / "registry", clock.now(), "fullsnap", 8 * YEAR)
    yield registry, Authority(hsm, registry), clock
    registry.close()


def _populate(registry: Registry, authority: Authority, clock: FixedClock) -> None:
    """The module's population, once (whichever test comes first)."""
    with registry.read() as tx:
        if next(tx.holders(), None) is not None:
            return
    issuers = {r.kind: r for r in authority.issuers() if r.kind is not None}
    with registry.write() as tx:
        _Data(tx, issuers, clock.now()).population(240)


def test_streaming_full_snapshot_equals_reference(
    world: tuple[Registry, Authority, FixedClock], tmp_path: Path
) -> None:
    registry, authority, clock = world
    _populate(registry, authority, clock)
    issuers = {r.kind: r for r in authority.issuers() if r.kind is not None}
    publisher = Publisher(
        registry, authority, tmp_path / "snapshots", clock, publisher_settings(), RETENTION
    )
    reference = _compare(publisher, registry, authority, clock.now(), tmp_path)
    # Every case is there: losses kept and dropped, links of every type, consents.
    with registry.read() as tx:
        all_events = list(tx.events_since(0))
        records = list(tx.certificates())
    assert {e.loss.cause for e in reference.events} == set(LossCause)
    assert 0 < len(reference.events) < len(all_events)
    assert {link.type for link in reference.links} == set(LinkType)
    assert reference.consents and reference.signing_records
    assert len(reference.records) < len(records)
    expired = [r for r in records if r.not_after < clock.now()]
    assert any(RETENTION.issuance_retained(r.kind, r.not_before, clock.now()) for r in expired)

    # An issuer compromise: every record goes through the effective rule instead.
    with registry.write() as tx:
        tx.put_compromise(
            Compromise(
                issuers[CertKind.CARD_SIGN].key_id,
                CertKind.CARD_SIGN,
                clock.now() - timedelta(days=30),
            )
        )
    clock.advance(timedelta(hours=1))
    reference = _compare(publisher, registry, authority, clock.now(), tmp_path)
    assert all(kind is not CertKind.CARD_SIGN for kind, _, _ in reference.entries)


def test_links_written_by_a_second_process_are_the_same(
    world: tuple[Registry, Authority, FixedClock], tmp_path: Path
) -> None:
    """A publish whose links pass runs in a second process gives the same files."""
    registry, authority, clock = world
    _populate(registry, authority, clock)
    out = tmp_path / "links.bin"
    with registry.read() as tx:
        process = LinkProcess(
            registry.path, tx.transaction_id, RETENTION, clock.now(), out, tmp_path
        )
        count = process.result()
        expected = list(FullContent(tx, [], RETENTION, clock.now()).link_rows())
    assert count == len(expected) > 0
    assert out.read_bytes() == LINKS_MAGIC + b"".join(expected)
    clock.advance(timedelta(minutes=10))
    publisher = Publisher(
        registry,
        authority,
        tmp_path / "snapshots",
        clock,
        publisher_settings(),
        RETENTION,
        link_process_from=0,
    )
    reference = _compare(publisher, registry, authority, clock.now(), tmp_path)
    assert {link.type for link in reference.links} == set(LinkType)


def test_second_process_gives_way_to_a_later_commit(
    world: tuple[Registry, Authority, FixedClock], tmp_path: Path
) -> None:
    """A second process that would read another commit than the caller's writes nothing;
    nor does one that fails."""
    registry, _, clock = world
    out = tmp_path / "links.bin"
    with registry.read() as tx:
        later = tx.transaction_id + 1
    stale = LinkProcess(registry.path, later, RETENTION, clock.now(), out, tmp_path)
    assert stale.result() is None
    broken = LinkProcess(tmp_path / "nowhere", later, RETENTION, clock.now(), out, tmp_path)
    assert broken.result() is None
    assert not out.exists()


def test_links_sorted_in_bounded_runs(
    world: tuple[Registry, Authority, FixedClock], tmp_path: Path
) -> None:
    """Small runs force the temporary-file merge; the rows are those of one big sort."""
    registry, authority, clock = world
    with registry.read() as tx:
        one_run = FullContent(tx, authority.issuers(), RETENTION, clock.now())
        expected = list(one_run.link_rows())
        assert one_run.link_runs == 0
        many = FullContent(
            tx, authority.issuers(), RETENTION, clock.now(), scratch=tmp_path, link_run_rows=7
        )
        assert list(many.link_rows()) == expected
        assert many.link_runs > 10
    assert expected == sorted(set(expected))
    assert not list(tmp_path.iterdir())  # the runs were anonymous temporary files


@pytest.mark.parametrize("read_rows", [1, 5, 1 << 14])
def test_external_sort_orders_and_deduplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_rows: int
) -> None:
    """Also with merge blocks smaller than a run, so blocks end inside runs of equal rows."""
    monkeypatch.setattr(external_sort, "_READ_ROWS", read_rows)
    rng = random.Random(5)
    rows = [rng.randbytes(2) for _ in range(2000)]  # 2-byte rows: many repeat
    rows += rows[:300]  # duplicates across runs
    sorter = ExternalSort(2, run_rows=64, directory=tmp_path)
    for start in range(0, len(rows), 10):
        sorter.add(rows[start : start + 10])
    assert list(sorter.sorted_rows()) == sorted(set(rows))
    assert sorter.runs > 30
    with pytest.raises(ValueError, match="expected 3"):
        ExternalSort(3).add([b"ab"])
