"""A publish that fails takes nothing: no snapshot sequence, no CRL number (issue 15, item 7).

The real Publisher on the session's SoftHSM2 token; the failure is real too: the
registry names a snapshot-signing key the token does not hold, so the HSM answers
"no such key" when the manifest is to be signed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jpki_va.core.clock import FixedClock
from jpki_va.core.domain import CertKind, Loss, LossCause
from jpki_va.hsm import Hsm, KeyNotFound
from jpki_va.server.law.loss_recording import DEFAULT_REASON
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import CertificateRecord
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.signer.authority import (
    SNAPSHOT_SIGNER,
    Authority,
    put_signer_meta,
    signer_meta,
)
from jpki_va.server.signer.publisher import Publisher, crl_counter
from jpki_va.server.snapshot.manifest import snapshot_sequence
from tests.support import bootstrapped_registry


@pytest.fixture
def world(hsm: Hsm, tmp_path: Path) -> Iterator[tuple[Registry, Publisher, FixedClock]]:
    clock = FixedClock(datetime(2030, 6, 1, 9, 0, tzinfo=UTC))
    registry = bootstrapped_registry(hsm, tmp_path / "registry", clock.now(), "pubfail")
    authority = Authority(hsm, registry)
    publisher = Publisher(
        registry, authority, tmp_path / "snapshots", clock, ProfileSettings("http://va.test")
    )
    yield registry, publisher, clock
    registry.close()


def _record(registry: Registry, authority_issuer: bytes, serial: int, now: datetime) -> None:
    with registry.write() as tx:
        tx.add_certificate(
            CertificateRecord(
                kind=CertKind.CARD_SIGN,
                serial=serial,
                issuer_key_id=authority_issuer,
                resident_code=f"{50000000000 + serial:011d}",
                partition="131016",
                holder=Holder("試験 三郎", "千代田区5-5", "1970-07-07", "男"),
                not_before=now - timedelta(days=1),
                not_after=now + timedelta(days=365),
                certificate_der=b"",  # a bulk record: no body (and so no key to index)
            )
        )


def test_failed_publishes_take_no_sequence_and_no_crl_number(
    world: tuple[Registry, Publisher, FixedClock], tmp_path: Path
) -> None:
    registry, publisher, clock = world
    with registry.read() as tx:
        issuer = next(r for r in tx.issuers() if r.kind is CertKind.CARD_SIGN)
    _record(registry, issuer.key_id, 1001, clock.now())
    first = publisher.publish_full()
    scope = (CertKind.CARD_SIGN, issuer.key_id, "131016")
    with registry.read() as tx:
        crl_number = tx.counter(crl_counter(*scope))
        label, cert = signer_meta(tx)[SNAPSHOT_SIGNER]

    # The snapshot key is gone from the token: every publish fails, full or delta.
    with registry.write() as tx:
        put_signer_meta(tx, SNAPSHOT_SIGNER, f"gone-{uuid.uuid4().hex[:8]}", cert)
    with registry.write() as tx:
        tx.record_loss(
            CertKind.CARD_SIGN,
            1001,
            Loss(clock.now(), LossCause.HOLDER_REQUEST, DEFAULT_REASON[LossCause.HOLDER_REQUEST]),
        )
    for publish in (publisher.publish_full, publisher.publish_delta_or_full) * 3:
        with pytest.raises(KeyNotFound):
            publish()
    with registry.read() as tx:
        assert tx.counter("snapshot") == first.sequence
        assert tx.counter(crl_counter(*scope)) == crl_number
    snapshots = tmp_path / "snapshots"
    assert [p.name for p in snapshots.iterdir()] == [first.path.name]  # no half-written one

    with registry.write() as tx:
        put_signer_meta(tx, SNAPSHOT_SIGNER, label, cert)
    delta = publisher.publish_delta_or_full()
    assert (delta.type, delta.sequence, delta.event_count) == ("delta", first.sequence + 1, 1)
    full = publisher.publish_full()
    assert full.sequence == first.sequence + 2
    assert sorted(snapshot_sequence(p) or 0 for p in snapshots.iterdir()) == [1, 2, 3]
    with registry.read() as tx:
        assert tx.counter(crl_counter(*scope)) == crl_number + 2
