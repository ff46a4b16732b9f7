"""The index's data databases and delta application, on real LMDB with software keys.

Snapshots are built here with SnapshotBuilder and signed with throwaway software
keys (the signer's HSM path is exercised by the integration tests), so each case
can say exactly what a snapshot holds, including ones the signer never makes.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lmdb
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind, CrlReason, Link, LinkType, Loss, LossCause, record_key
from jpki_va.core.oids import OID_LOSS_CAUSE
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import CertificateRecord, LossEvent, LossTrigger
from jpki_va.server.pki import cert_profile, crl_profile
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.pki.crl_profile import CrlEntry
from jpki_va.server.pki.crl_stream import read_entries
from jpki_va.server.responder import index_build as index_module
from jpki_va.server.responder import lmdb_pages
from jpki_va.server.responder.index_build import build_index, publish_index
from jpki_va.server.responder.index_delta import DeltaNotApplicable, apply_delta
from jpki_va.server.responder.index_layout import scope_key
from jpki_va.server.responder.index_reader import Index, current_index
from jpki_va.server.responder.index_upgrade import upgrade_index
from jpki_va.server.snapshot.data_files import (
    EVENTS_MAGIC,
    LINKS_MAGIC,
    consent_line,
    event_row,
    link_items,
    link_rows,
    parse_consent,
    parse_event_row,
    parse_signing_record,
    read_event_rows,
    signing_record_line,
    write_event_rows,
    write_link_rows,
)
from jpki_va.server.snapshot.manifest import (
    CONSENTS,
    EVENTS,
    LINKS,
    RECORDS,
    SIGNING_RECORDS,
    SnapshotRejected,
)
from jpki_va.server.snapshot.record_format import MAGIC, encode_file_record, unpack_fields
from jpki_va.server.snapshot.verify import SnapshotVerifier, VerifiedSnapshot
from jpki_va.server.snapshot.writer import SnapshotBuilder

NOW = datetime.now(UTC).replace(microsecond=0)
SETTINGS = ProfileSettings()
KIND = CertKind.CARD_SIGN


class Ca:
    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = cert_profile.root_certificate(
            self.root_key, NOW - timedelta(days=1), NOW + timedelta(days=3650)
        )
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert = cert_profile.issuing_ca_certificate(
            self.root_key, self.root, KIND, self.key.public_key(),
            NOW - timedelta(days=1), NOW + timedelta(days=3650),
            links=cert_profile.root_links(SETTINGS, cert_profile.key_id(self.root_key.public_key())),  # noqa: E501
        )  # fmt: skip
        self.snap_key = ec.generate_private_key(ec.SECP256R1())
        self.snap_cert = cert_profile.snapshot_signer_certificate(
            self.root_key, self.root, self.snap_key.public_key(),
            NOW - timedelta(days=1), NOW + timedelta(days=3650),
        )  # fmt: skip
        self.key_id = cert_profile.key_id(self.key.public_key())


@pytest.fixture(scope="module")
def ca() -> Ca:
    return Ca()


def _record(serial: int) -> CertificateRecord:
    return CertificateRecord(
        kind=KIND,
        serial=serial,
        issuer_key_id=b"",
        resident_code="12345678901",
        partition="131016",
        holder=Holder("試験 太郎", "千代田区1-1", "1990-01-01", "男"),
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=365),
        certificate_der=b"",
    )


def _event(ca: Ca, sequence: int, serial: int) -> LossEvent:
    return LossEvent(
        sequence=sequence,
        kind=KIND,
        serial=serial,
        partition="131016",
        issuer_key_id=ca.key_id,
        loss=Loss(NOW, LossCause.HOLDER_REQUEST, CrlReason.KEY_COMPROMISE),
        recorded_at=NOW,
    )


def _snapshot(
    ca: Ca,
    root: Path,
    sequence: int,
    *,
    records: list[int],
    crl: list[int] | None,  # None: no CRL (a delta whose scope lost nothing since)
    events: list[LossEvent],
    data: dict[str, list[dict[str, Any]]] | None = None,
    links: list[Link] | None = None,
    delta: tuple[int, int, int] | None = None,  # base sequence, previous, base CRL number
) -> VerifiedSnapshot:
    builder = SnapshotBuilder(root, sequence)
    builder.add_issuers([ca.cert])
    builder.add_records(
        encode_file_record(
            record_key(KIND, s), NOW - timedelta(days=1), NOW + timedelta(days=365), "131016", 0
        )
        for s in sorted(records)
    )
    if crl is not None:
        entries = [
            CrlEntry(s, NOW, LossCause.HOLDER_REQUEST, CrlReason.KEY_COMPROMISE) for s in crl
        ]
        crl_obj = crl_profile.crl(
            SETTINGS, ca.key, ca.cert, kind=KIND, partition="131016", number=sequence,
            this_update=NOW, next_update=NOW + timedelta(days=1), entries=entries,
            delta_base=None if delta is None else delta[2],
        )  # fmt: skip
        builder.add_crl(KIND, "131016", crl_obj, sequence, None if delta is None else delta[2])
    builder.add_events(events)
    if links:
        builder.add_links(sorted(row for link in links for row in link_rows(link)))
    for name, lines in (data or {}).items():
        builder.add_jsonl(name, lines)
    path, _ = builder.commit(
        type="full" if delta is None else "delta",
        base_sequence=None if delta is None else delta[0],
        previous_sequence=None if delta is None else delta[1],
        created_at=NOW,
        event_sequence=max((e.sequence for e in events), default=0),
        issuer_key_ids=[ca.key_id],
        signing_key=ca.snap_key,
        signer_cert=ca.snap_cert,
    )
    return SnapshotVerifier([ca.root], SystemClock()).verify(path)


@pytest.fixture
def live(ca: Ca, tmp_path: Path) -> tuple[Path, Path]:
    """A live index of a full snapshot: serial 10 with consent and links, 11 lost."""
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    full = _snapshot(
        ca, snapshots, 1, records=[10, 11], crl=[11], events=[_event(ca, 1, 11)],
        links=[Link(LinkType.CARD_SIGN_MOBILE_SIGN, KIND, 10, CertKind.MOBILE_SIGN, 20)],
        data={
            SIGNING_RECORDS: [signing_record_line(_record(10))],
            CONSENTS: [consent_line(_record(10), "bank-a", True)],
        },
    )  # fmt: skip
    built = build_index(full, tmp_path / "index")
    publish_index(tmp_path / "index", built)
    return snapshots, built


def test_full_snapshot_data_is_indexed_with_readers(live: tuple[Path, Path]) -> None:
    index = Index(live[1])
    try:
        link = Link(LinkType.CARD_SIGN_MOBILE_SIGN, KIND, 10, CertKind.MOBILE_SIGN, 20)
        assert index.links(KIND, 10) == [link]
        assert index.links(CertKind.MOBILE_SIGN, 20) == [link]  # both directions
        assert index.links(KIND, 11) == []
        record = index.signing_record(KIND, 10)
        assert record is not None and (record.name, record.sex) == ("試験 太郎", "男")
        assert index.signing_record(KIND, 11) is None
        assert index.consent(KIND, 10, "bank-a")
        assert not index.consent(KIND, 10, "bank-b")
        assert [e.serial for e in index.events_since(0)] == [11]
        assert list(index.events_since(1)) == []
        lost = index.get(KIND, 11)
        assert lost is not None and lost.loss is not None
        assert lost.loss.cause is LossCause.HOLDER_REQUEST
    finally:
        index.close()


def test_delta_applies_in_one_transaction_and_readers_see_it(
    ca: Ca, live: tuple[Path, Path]
) -> None:
    # Workers keep their handle open across deltas (they reload metadata when the
    # version key changes: exercised by every end-to-end delta test); LMDB allows
    # one handle per environment and process, so here the reader opens after.
    snapshots, path = live
    delta = _snapshot(
        ca, snapshots, 2, records=[12], crl=[12], events=[_event(ca, 2, 12)],
        data={CONSENTS: [consent_line(_record(10), "bank-a", False)]},
        delta=(1, 1, 1),
    )  # fmt: skip
    applied = apply_delta(delta, path)
    assert [(loss.serial, loss.recorded_at) for loss in applied.losses] == [(12, NOW)]
    reader = Index(path)
    try:
        record = reader.get(KIND, 12)
        assert record is not None and record.loss is not None
        assert (reader.sequence, reader.full_sequence, reader.event_sequence) == (2, 1, 2)
        assert not reader.consent(KIND, 10, "bank-a")
        assert reader.signing_record(KIND, 10) is None  # no consent left: it leaves
        assert [e.serial for e in reader.events_since(1)] == [12]
        # A stream batch's values (the page walk, compiled here) as `get` reads them.
        assert lmdb_pages.COMPILED
        serials = [13, 12, 11, 10, 9]
        values, _ids, sequence, _compromised = reader.get_values(
            [record_key(KIND, serial) for serial in serials]
        )
        assert sequence == 2
        assert [None if v is None else unpack_fields(v) for v in values] == reader.get_packed(
            [(KIND, serial) for serial in serials]
        )
        assert [v is not None for v in values] == [False, True, True, True, False]
    finally:
        reader.close()


def test_delta_that_disagrees_with_its_crl_changes_nothing(ca: Ca, live: tuple[Path, Path]) -> None:
    snapshots, path = live
    # The events say 12 lost effect; the signed delta CRL does not list it.
    delta = _snapshot(
        ca, snapshots, 2, records=[12], crl=[], events=[_event(ca, 2, 12)], delta=(1, 1, 1)
    )
    with pytest.raises(SnapshotRejected, match="not on a CRL"):
        apply_delta(delta, path)
    index = Index(path)
    try:  # nothing half-written: not even the new record
        assert index.get(KIND, 12) is None
        assert index.sequence == 1
    finally:
        index.close()


@pytest.mark.parametrize(("base", "previous"), [(7, 1), (1, 5)])
def test_delta_that_does_not_follow_is_not_applied(
    ca: Ca, live: tuple[Path, Path], base: int, previous: int
) -> None:
    snapshots, path = live
    delta = _snapshot(ca, snapshots, 9, records=[12], crl=[], events=[], delta=(base, previous, 1))
    with pytest.raises(DeltaNotApplicable):
        apply_delta(delta, path)
    assert current_index(path.parent) == path


def test_delta_crl_on_another_base_is_rejected(ca: Ca, live: tuple[Path, Path]) -> None:
    snapshots, path = live
    delta = _snapshot(ca, snapshots, 2, records=[], crl=[], events=[], delta=(1, 1, 99))
    with pytest.raises(SnapshotRejected, match="not a delta on the live full CRL"):
        apply_delta(delta, path)


def test_data_lines_round_trip_and_refuse_malformed(ca: Ca) -> None:
    event = _event(ca, 3, 0xABC)
    assert parse_event_row(event_row(event)) == event
    link = Link(LinkType.RENEWAL, KIND, 1, KIND, 2)
    forward, backward = link_rows(link)
    a, b = record_key(KIND, 1), record_key(KIND, 2)
    count, items = link_items(LINKS_MAGIC + forward + backward)
    assert count == 2
    assert list(items) == [
        (a + b, bytes([LinkType.RENEWAL, 0])),
        (b + a, bytes([LinkType.RENEWAL, 1])),
    ]
    assert parse_signing_record(signing_record_line(_record(5))).address == "千代田区1-1"
    assert parse_consent(consent_line(_record(5), "v", True)).granted
    with pytest.raises(ValueError, match="malformed link row"):
        link_items(LINKS_MAGIC + forward[:-2] + bytes([9, 0]))  # no such LinkType
    with pytest.raises(ValueError, match="malformed link row"):
        link_items(LINKS_MAGIC + forward[:-1] + bytes([2]))  # no such direction
    with pytest.raises(ValueError, match="increasing"):
        write_link_rows(io.BytesIO(), [backward, forward])
    with pytest.raises(ValueError, match="truncated"):
        link_items(LINKS_MAGIC + forward[:-1])
    with pytest.raises(ValueError):
        parse_signing_record({**signing_record_line(_record(5)), "kind": "CARD_AUTH"})
    with pytest.raises(ValueError):
        parse_consent({**consent_line(_record(5), "v", True), "verifier": ""})


def test_event_rows_round_trip_every_field(ca: Ca) -> None:
    cascaded = LossEvent(
        sequence=2**40,
        kind=CertKind.MOBILE_SIGN,
        serial=2**159 - 1,
        partition="011002",
        issuer_key_id=ca.key_id,
        loss=Loss(NOW + timedelta(microseconds=7), LossCause.CARD_CERT_LOST_EFFECT,
                  CrlReason.CESSATION_OF_OPERATION),
        recorded_at=NOW + timedelta(days=30, microseconds=1),
        trigger=LossTrigger(CertKind.CARD_SIGN, 0xABCDEF, LossCause.RESIDENT_CHANGE),
    )  # fmt: skip
    plain = _event(ca, 2**40 + 1, 0)
    out = io.BytesIO()
    assert write_event_rows(out, [cascaded, plain]) == 2
    assert [parse_event_row(row) for row, _ in read_event_rows(out.getvalue())] == [
        cascaded,
        plain,
    ]


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, bytes(8), "sequence 0"),
        (8, b"\x09", "kind"),  # no such certificate kind
        (29, (1_000_000).to_bytes(4, "little"), "partition"),
        (53, (2**62).to_bytes(8, "little"), "time out of range"),
        (69, b"\x09", "cause"),  # no such loss cause
        (70, b"\x07", "reason"),  # CRLReason 7 is unassigned
        (92, b"\x01", "trigger cause without a trigger"),
        (71, b"\x09", "malformed trigger"),
    ],
)
def test_event_rows_refuse_every_malformed_field(
    ca: Ca, offset: int, value: bytes, message: str
) -> None:
    row = bytearray(event_row(_event(ca, 5, 0xAB)))
    row[offset : offset + len(value)] = value
    with pytest.raises(ValueError, match=message):
        parse_event_row(bytes(row))
    with pytest.raises(ValueError, match=message):
        list(read_event_rows(EVENTS_MAGIC + bytes(row)))


def test_events_files_refuse_disorder_truncation_and_foreign_data(ca: Ca) -> None:
    first, second = _event(ca, 1, 10), _event(ca, 2, 11)
    with pytest.raises(ValueError, match="increasing"):
        write_event_rows(io.BytesIO(), [second, first])
    with pytest.raises(ValueError, match="out of sequence order"):
        list(read_event_rows(EVENTS_MAGIC + event_row(second) + event_row(first)))
    with pytest.raises(ValueError, match="truncated"):
        list(read_event_rows(EVENTS_MAGIC + event_row(first)[:-1]))
    with pytest.raises(ValueError, match="not a jpki-va events file"):
        list(read_event_rows(LINKS_MAGIC + event_row(first)))
    with pytest.raises(ValueError, match="six digits"):
        event_row(replace(first, partition="13101"))


def test_snapshot_with_malformed_events_is_rejected_and_builds_nothing(
    ca: Ca, tmp_path: Path
) -> None:
    builder = SnapshotBuilder(tmp_path, 1)
    builder.add_issuers([ca.cert])
    builder.add_records([])
    bad = bytearray(event_row(_event(ca, 1, 10)))
    bad[69] = 9  # no such loss cause; written past the builder, which would refuse it
    builder._add(EVENTS, EVENTS_MAGIC + bytes(bad))
    path, _ = builder.commit(
        type="full", base_sequence=None, created_at=NOW, event_sequence=1,
        issuer_key_ids=[ca.key_id], signing_key=ca.snap_key, signer_cert=ca.snap_cert,
    )  # fmt: skip
    snapshot = SnapshotVerifier([ca.root], SystemClock()).verify(path)
    with pytest.raises(SnapshotRejected, match=r"events\.bin: .*unknown cause 9"):
        build_index(snapshot, tmp_path / "index")
    assert not (tmp_path / "index" / "idx-000000000001").exists()


def test_snapshot_with_the_retired_json_events_is_rejected(ca: Ca, tmp_path: Path) -> None:
    builder = SnapshotBuilder(tmp_path, 1)
    builder.add_issuers([ca.cert])
    builder.add_records([])
    builder.add_jsonl("events.jsonl", [{"sequence": 1}])
    path, _ = builder.commit(
        type="full", base_sequence=None, created_at=NOW, event_sequence=1,
        issuer_key_ids=[ca.key_id], signing_key=ca.snap_key, signer_cert=ca.snap_cert,
    )  # fmt: skip
    snapshot = SnapshotVerifier([ca.root], SystemClock()).verify(path)
    with pytest.raises(SnapshotRejected, match=r"events\.jsonl is a retired format"):
        build_index(snapshot, tmp_path / "index")


def test_link_items_check_every_row_shape() -> None:
    link = Link(LinkType.CARD_SIGN_MOBILE_SIGN, KIND, 1, CertKind.MOBILE_SIGN, 2)
    rows = sorted(link_rows(link))
    count, items = link_items(LINKS_MAGIC + b"".join(rows))
    assert count == 2
    assert list(items) == [(r[:42], r[42:]) for r in rows]
    for bad in (rows[1][:-2] + bytes([9, 0]), rows[1][:21] + b"\x07" + rows[1][22:]):
        with pytest.raises(ValueError, match="malformed link row"):
            link_items(LINKS_MAGIC + rows[0] + bad)


def _full(
    ca: Ca, root: Path, records: list[bytes], crl: x509.CertificateRevocationList
) -> VerifiedSnapshot:
    """A full snapshot of records as given (the signer's writer would refuse some)."""
    builder = SnapshotBuilder(root, 1)
    builder.add_issuers([ca.cert])
    builder._add(RECORDS, MAGIC + b"".join(records))
    builder._record_count = len(records)
    builder.add_crl(KIND, "131016", crl, 1)
    path, _ = builder.commit(
        type="full", base_sequence=None, created_at=NOW, event_sequence=0,
        issuer_key_ids=[ca.key_id], signing_key=ca.snap_key, signer_cert=ca.snap_cert,
    )  # fmt: skip
    return SnapshotVerifier([ca.root], SystemClock()).verify(path)


def _file_record(serial: int, partition: str = "131016", ordinal: int = 0) -> bytes:
    return encode_file_record(
        record_key(KIND, serial), NOW - timedelta(days=1), NOW + timedelta(days=365),
        partition, ordinal,
    )  # fmt: skip


def _our_crl(ca: Ca, serials: list[int]) -> x509.CertificateRevocationList:
    entries = [CrlEntry(s, NOW, LossCause.HOLDER_REQUEST, CrlReason.SUPERSEDED) for s in serials]
    return crl_profile.crl(
        SETTINGS, ca.key, ca.cert, kind=KIND, partition="131016", number=1,
        this_update=NOW, next_update=NOW + timedelta(days=1), entries=entries,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("records", "crl", "message"),
    [
        ([_file_record(1), _file_record(2, "011002")], [], "1 .* groups are in no CRL's scope"),
        ([_file_record(1)], [1, 7], "1 of 2 CRL entries name certificates never issued"),
        ([_file_record(2), _file_record(1)], [], "records out of key order"),
        ([_file_record(1, ordinal=1)], [], "unknown kind or issuer"),
        ([_file_record(1), _file_record(1)], [], "records out of key order"),
        ([_file_record(1)[:-1]], [], "records file is truncated"),
    ],
)
def test_full_build_refuses_what_the_snapshot_cannot_mean(
    ca: Ca, tmp_path: Path, records: list[bytes], crl: list[int], message: str
) -> None:
    snapshot = _full(ca, tmp_path, records, _our_crl(ca, crl))
    with pytest.raises(SnapshotRejected, match=message):
        build_index(snapshot, tmp_path / "index")
    assert not any((tmp_path / "index").iterdir())  # nothing half-built left behind


def _foreign_crl(ca: Ca, *extensions: x509.ExtensionType) -> x509.CertificateRevocationList:
    """Our CRL frame with one entry cryptography writes, carrying `extensions`."""
    entry = x509.RevokedCertificateBuilder().serial_number(1).revocation_date(NOW)
    for extension in extensions:
        entry = entry.add_extension(extension, False)
    frame = _our_crl(ca, [])
    builder = x509.CertificateRevocationListBuilder().issuer_name(frame.issuer)
    builder = builder.last_update(NOW).next_update(NOW + timedelta(days=1))
    for extension in frame.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.add_revoked_certificate(entry.build()).sign(ca.key, hashes.SHA256())


def test_crl_entries_beyond_our_encoding_are_read_by_cryptography(ca: Ca, tmp_path: Path) -> None:
    cause = x509.UnrecognizedExtension(OID_LOSS_CAUSE, bytes([0x0A, 0x01, LossCause.RECORD_ERROR]))
    invalidity = x509.InvalidityDate((NOW - timedelta(days=2)).replace(tzinfo=None))
    crl = _foreign_crl(ca, cause, invalidity)  # an extension our writer never adds
    assert read_entries(crl.tbs_certlist_bytes) is None
    built = build_index(_full(ca, tmp_path, [_file_record(1)], crl), tmp_path / "index")
    index = Index(built)
    try:
        record = index.get(KIND, 1)
        assert record is not None and record.loss is not None
        assert (record.loss.cause, record.loss.time) == (LossCause.RECORD_ERROR, NOW)
    finally:
        index.close()


def test_crl_entry_without_a_loss_cause_is_rejected(ca: Ca, tmp_path: Path) -> None:
    snapshot = _full(ca, tmp_path, [_file_record(1)], _foreign_crl(ca))
    with pytest.raises(SnapshotRejected, match="CRL entry without a loss cause"):
        build_index(snapshot, tmp_path / "index")


@pytest.mark.parametrize("serials", [[1, 2, 3, 4], [1, 2, 3, 4, 5], [1, 2, 4, 3, 5]])
def test_full_build_in_several_transactions(
    ca: Ca, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serials: list[int]
) -> None:
    """Records go in batches; order is checked across batch boundaries too."""
    monkeypatch.setattr(index_module, "_STATUS_BATCH", 2)
    snapshot = _full(ca, tmp_path, [_file_record(s) for s in serials], _our_crl(ca, [3]))
    if serials != sorted(serials):
        with pytest.raises(SnapshotRejected, match="records out of key order"):
            build_index(snapshot, tmp_path / "index")
        return
    index = Index(build_index(snapshot, tmp_path / "index"))
    try:
        found = [index.get(KIND, s) for s in serials]
        assert all(r is not None for r in found)
        assert [s for s, r in zip(serials, found, strict=True) if r and r.loss] == [3]
    finally:
        index.close()


def test_snapshot_with_a_malformed_link_row_is_rejected(ca: Ca, tmp_path: Path) -> None:
    link = Link(LinkType.CARD_SIGN_MOBILE_SIGN, KIND, 1, CertKind.MOBILE_SIGN, 2)
    first, second = sorted(link_rows(link))
    builder = SnapshotBuilder(tmp_path, 1)
    builder.add_issuers([ca.cert])
    builder.add_records([])
    builder._add(LINKS, LINKS_MAGIC + first + second[:-1] + b"\x02")  # no such direction
    path, _ = builder.commit(
        type="full", base_sequence=None, created_at=NOW, event_sequence=0,
        issuer_key_ids=[ca.key_id], signing_key=ca.snap_key, signer_cert=ca.snap_cert,
    )  # fmt: skip
    snapshot = SnapshotVerifier([ca.root], SystemClock()).verify(path)
    with pytest.raises(SnapshotRejected, match="malformed link row"):
        build_index(snapshot, tmp_path / "index")


# Applies a verified delta to an index, in its own process as the ingester does: LMDB
# wants one handle per environment and process, and the test keeps a reader open.
_APPLY_ELSEWHERE = """
import sys
from pathlib import Path
from cryptography import x509
from jpki_va.core.clock import SystemClock
from jpki_va.server.responder.index_delta import apply_delta
from jpki_va.server.snapshot.verify import SnapshotVerifier
root = x509.load_pem_x509_certificate(Path(sys.argv[2]).read_bytes())
apply_delta(SnapshotVerifier([root], SystemClock()).verify(Path(sys.argv[1])), Path(sys.argv[3]))
"""


def _apply_elsewhere(ca: Ca, snapshots: Path, delta: VerifiedSnapshot, index: Path) -> None:
    """Apply `delta` in another process, as the ingester does beside a worker's handle
    (LMDB allows one handle per environment and process)."""
    root = snapshots / "root.pem"
    root.write_bytes(ca.root.public_bytes(serialization.Encoding.PEM))
    subprocess.run(
        [sys.executable, "-c", _APPLY_ELSEWHERE, str(delta.path), str(root), str(index)],
        check=True,
        timeout=60,
    )


def test_a_delta_is_read_once_however_many_threads_meet_it(
    ca: Ca, live: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's request threads share one reload of the metadata after a delta: each
    parsing its own copy (megabytes of JSON at a million holders) took a worker's
    private memory from 50 to 150 MB in a soak, and kept it."""
    snapshots, path = live
    reader = Index(path)
    try:
        delta = _snapshot(
            ca, snapshots, 2, records=[12], crl=[12], events=[_event(ca, 2, 12)], delta=(1, 1, 1)
        )  # fmt: skip
        _apply_elsewhere(ca, snapshots, delta, path)
        loads: list[bytes] = []
        load = Index._load_meta

        def slow_load(self: Index, txn: Any, *rest: Any) -> Any:
            loads.append(bytes(txn.get(b"version", db=self._meta_db)))
            time.sleep(0.2)  # long enough for every thread to meet the new version
            return load(self, txn, *rest)

        monkeypatch.setattr(Index, "_load_meta", slow_load)
        threads = 8
        start = threading.Barrier(threads)

        def ask(_: int) -> int:
            start.wait()
            record = reader.get(KIND, 12)
            assert record is not None and record.loss is not None
            times = reader.crl_times(record)
            assert times is not None and times.number == 2  # the delta's CRL, not the full's
            return reader.sequence

        with ThreadPoolExecutor(threads) as pool:
            assert list(pool.map(ask, range(threads))) == [2] * threads
        assert len(loads) == 1
        assert (reader.sequence, reader.event_sequence) == (2, 2)
    finally:
        reader.close()


def test_a_reload_parses_again_only_the_scopes_a_delta_brings(
    ca: Ca, live: tuple[Path, Path]
) -> None:
    snapshots, path = live
    reader = Index(path)
    try:
        record = reader.get(KIND, 11)
        assert record is not None
        full = reader.crl_times(record)
        assert full is not None and full.number == 1
        # Only a record: the scope's key is as it was, and so are its objects.
        _apply_elsewhere(
            ca, snapshots, _snapshot(ca, snapshots, 2, records=[12], crl=None, events=[],
                                     delta=(1, 1, 1)), path,
        )  # fmt: skip
        assert reader.get(KIND, 12) is not None and reader.sequence == 2
        assert reader.crl_times(record) is full
        # A delta CRL: the scope's current CRL is it; its full CRL stays, as it was.
        _apply_elsewhere(
            ca, snapshots, _snapshot(ca, snapshots, 3, records=[], crl=[12],
                                     events=[_event(ca, 2, 12)], delta=(1, 2, 1)), path,
        )  # fmt: skip
        assert reader.get(KIND, 12) is not None and reader.sequence == 3
        current = reader.crl_times(record)
        assert current is not None and (current.number, current.next_update) == (
            3,
            NOW + timedelta(days=1),
        )
        assert reader.current_crls == {(KIND, ca.key_id, "131016"): full}
    finally:
        reader.close()


def test_an_index_of_the_earlier_layout_is_upgraded_in_place(
    ca: Ca, live: tuple[Path, Path]
) -> None:
    """Before a key per CRL scope, the manifest in `meta` listed every scope's CRLs."""
    snapshots, path = live
    delta = _snapshot(
        ca, snapshots, 2, records=[12], crl=[12], events=[_event(ca, 2, 12)], delta=(1, 1, 1)
    )
    apply_delta(delta, path)

    def seen(reader: Index) -> tuple[object, ...]:
        record = reader.get(KIND, 11)
        assert record is not None
        return (reader.crl_times(record), reader.current_crls, reader.latest_next_update)

    reader = Index(path)
    try:
        expected = seen(reader)
    finally:
        reader.close()
    full_crls = json.loads((snapshots / "snap-000000000001" / "manifest.json").read_bytes())
    # The earlier layout, as an index of the earlier version holds it.
    env = lmdb.open(str(path), max_dbs=16, map_size=1 << 30)
    try:
        meta_db = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            manifest = json.loads(txn.get(b"manifest", db=meta_db) or b"")
            scope = f"{KIND.name}:{ca.key_id.hex()}:131016"
            manifest.update(
                crls=[c.to_json() for c in delta.manifest.crls],
                full_crls=full_crls["crls"],
                crl_base={scope: 1},
            )
            txn.put(b"manifest", json.dumps(manifest).encode(), db=meta_db)
            assert txn.delete(scope_key(KIND, ca.key_id, "131016"), db=meta_db)
    finally:
        env.close()
    with pytest.raises(ValueError, match="earlier layout"):
        Index(path)
    assert upgrade_index(path)
    assert not upgrade_index(path)  # once
    reader = Index(path)
    try:
        assert seen(reader) == expected
    finally:
        reader.close()
    # And deltas apply on it as on any.
    apply_delta(
        _snapshot(ca, snapshots, 3, records=[13], crl=None, events=[], delta=(1, 2, 1)), path
    )
    reader = Index(path)
    try:
        assert reader.sequence == 3 and reader.get(KIND, 13) is not None
    finally:
        reader.close()
