"""Which delta CRLs a delta snapshot signs: the partitions that lost a certificate since
the previous snapshot, and those whose last delta CRL is past half its validity.

The real Publisher on the session's SoftHSM2 token, with a clock the test moves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from jpki_va.core.clock import FixedClock
from jpki_va.core.domain import CertKind, Loss, LossCause
from jpki_va.hsm import Hsm
from jpki_va.server.law.loss_recording import DEFAULT_REASON
from jpki_va.server.law.retention import RetentionPolicy
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import CertificateRecord
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.signer.authority import Authority
from jpki_va.server.signer.publisher import PublishedSnapshot, Publisher
from tests.support import bootstrapped_registry

HERE, THERE = "131016", "271004"


@dataclass
class World:
    registry: Registry
    authority: Authority
    clock: FixedClock
    snapshots: Path
    settings: ProfileSettings
    issuer: bytes

    def publisher(self) -> Publisher:
        return Publisher(self.registry, self.authority, self.snapshots, self.clock, self.settings)

    def issue(self, serial: int, partition: str, issued_at: datetime | None = None) -> None:
        now = self.clock.now()
        not_before = now - timedelta(days=1) if issued_at is None else issued_at
        with self.registry.write() as tx:
            tx.add_certificate(
                CertificateRecord(
                    kind=CertKind.CARD_SIGN,
                    serial=serial,
                    issuer_key_id=self.issuer,
                    resident_code=f"{60000000000 + serial:011d}",
                    partition=partition,
                    holder=Holder("試験 四郎", "千代田区6-6", "1980-08-08", "男"),
                    not_before=not_before,
                    not_after=now + timedelta(days=365),
                    certificate_der=b"",  # a bulk record: no body
                )
            )

    def lose(self, serial: int) -> None:
        cause = LossCause.HOLDER_REQUEST
        with self.registry.write() as tx:
            tx.record_loss(
                CertKind.CARD_SIGN, serial, Loss(self.clock.now(), cause, DEFAULT_REASON[cause])
            )


@pytest.fixture
def world(hsm: Hsm, tmp_path: Path) -> Iterator[World]:
    clock = FixedClock(datetime(2030, 6, 1, 9, 0, tzinfo=UTC))
    registry = bootstrapped_registry(hsm, tmp_path / "registry", clock.now(), "deltacrl")
    with registry.read() as tx:
        issuer = next(r for r in tx.issuers() if r.kind is CertKind.CARD_SIGN).key_id
    settings = ProfileSettings("http://va.test")
    yield World(registry, Authority(hsm, registry), clock, tmp_path / "snapshots", settings, issuer)
    registry.close()


def _delta_crls(snapshot: PublishedSnapshot) -> dict[str, x509.CertificateRevocationList]:
    """The snapshot's delta CRLs by partition."""
    manifest = json.loads((snapshot.path / "manifest.json").read_bytes())
    return {
        c["partition"]: x509.load_der_x509_crl((snapshot.path / c["file"]).read_bytes())
        for c in manifest["crls"]
        if c["delta_base"] is not None
    }


def _serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {entry.serial_number for entry in crl}


def _number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_a_delta_signs_what_changed_since_the_previous_snapshot(world: World) -> None:
    publisher = world.publisher()
    for serial, partition in ((1, HERE), (2, HERE), (3, THERE)):
        world.issue(serial, partition)
    assert publisher.publish_full().type == "full"

    world.lose(1)
    first = publisher.publish_delta_or_full()
    assert first.type == "delta"
    assert {p: _serials(c) for p, c in _delta_crls(first).items()} == {HERE: {1}}

    world.lose(3)
    second = publisher.publish_delta_or_full()
    assert {p: _serials(c) for p, c in _delta_crls(second).items()} == {THERE: {3}}

    world.lose(2)  # cumulative since the full CRL: 1 is listed again
    third = publisher.publish_delta_or_full()
    assert {p: _serials(c) for p, c in _delta_crls(third).items()} == {HERE: {1, 2}}
    assert _number(_delta_crls(third)[HERE]) > _number(_delta_crls(first)[HERE])

    # Only an issuance: no CRL is signed, also by a publisher started anew (the
    # registry keeps what each partition's last delta CRL was).
    world.issue(4, THERE)
    fourth = world.publisher().publish_delta_or_full()
    assert (fourth.type, fourth.record_count, _delta_crls(fourth)) == ("delta", 1, {})
    # Still every loss since the full, as the registry has them, after a restart.
    world.lose(4)
    fifth = world.publisher().publish_delta_or_full()
    assert {p: _serials(c) for p, c in _delta_crls(fifth).items()} == {THERE: {3, 4}}


def test_a_loss_leaves_the_delta_crl_with_its_certificates_retention(world: World) -> None:
    publisher = world.publisher()
    period = RetentionPolicy().issuance(CertKind.CARD_SIGN)
    world.issue(1, HERE, issued_at=world.clock.now() - period + timedelta(hours=1))
    world.issue(2, HERE)
    publisher.publish_full()
    world.lose(1)
    world.lose(2)
    first = publisher.publish_delta_or_full()
    assert {p: _serials(c) for p, c in _delta_crls(first).items()} == {HERE: {1, 2}}
    # 1's issuance record is past its retention: no loss since, yet HERE is signed anew.
    world.clock.advance(timedelta(hours=2))
    world.issue(3, HERE)
    second = publisher.publish_delta_or_full()
    assert {p: _serials(c) for p, c in _delta_crls(second).items()} == {HERE: {2}}


def test_a_delta_crl_past_half_its_validity_is_signed_anew(world: World) -> None:
    publisher = world.publisher()
    world.issue(1, HERE)
    world.issue(2, THERE)
    publisher.publish_full()
    world.lose(1)
    world.lose(2)
    first = _delta_crls(publisher.publish_delta_or_full())
    assert set(first) == {HERE, THERE}

    # Just before half the validity: nothing is due.
    world.clock.advance(world.settings.crl_validity / 2 - timedelta(minutes=1))
    world.issue(3, HERE)
    assert _delta_crls(publisher.publish_delta_or_full()) == {}

    # Past it: both, with the same entries, later times and higher numbers.
    world.clock.advance(timedelta(minutes=2))
    world.issue(4, HERE)
    renewed = _delta_crls(publisher.publish_delta_or_full())
    assert set(renewed) == {HERE, THERE}
    for partition, crl in renewed.items():
        before = first[partition]
        assert _serials(crl) == _serials(before)
        assert _number(crl) > _number(before)
        assert crl.next_update_utc is not None and before.next_update_utc is not None
        assert crl.next_update_utc > before.next_update_utc
