"""第31条第2号 and 第34条第1項: when the 30-day move-out rule ends an auth certificate.

The signer sweeps at every 00:00 Japan time on its own (here it looks at its clock
every 50 ms, and publishes only on request: delta interval 0), and dates the loss
when it records it, so an "as of" answer once given never changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta

import pytest

from jpki_va.core.clock import JST, FixedClock
from jpki_va.core.domain import CertKind, Loss, LossCause
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from jpki_va.server.law.resident_change import ResidentEvent, move_out_deadline, next_sweep
from tests.support import Pki, fresh_key, running_pki, wait_for

GOOD = va_pb2.CERT_STATUS_GOOD
REVOKED = va_pb2.CERT_STATUS_REVOKED


@pytest.fixture(scope="module")
def pki(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig, clock: FixedClock
) -> Iterator[Pki]:
    with running_pki(
        tmp_path_factory.mktemp("art31"), softhsm_token, clock=clock, sweep_check=0.05
    ) as running:
        yield running


def _move_out(pki: Pki, code: str, planned: object) -> None:
    pki.signer_stub.RecordResidentEvent(
        signer_pb2.RecordResidentEventRequest(
            resident_code=code,
            event=int(ResidentEvent.MOVE_OUT),  # type: ignore[arg-type]
            planned_date=str(planned),
        ),
        timeout=30,
    )


def _recorded_loss(pki: Pki, serial: int) -> Loss | None:
    with pki.signer.registry.read() as tx:
        record = tx.certificate(CertKind.CARD_AUTH, serial)
    assert record is not None
    return record.loss


def test_article_31_2_sweep_runs_at_midnight_japan_time_without_a_publish(
    pki: Pki, clock: FixedClock
) -> None:
    code = "31000000001"
    auth = pki.issue(CertKind.CARD_AUTH, resident_code=code, key=fresh_key())
    deadline = next_sweep(clock.now())
    planned = deadline.astimezone(JST).date() - timedelta(days=31)
    assert move_out_deadline(planned) == deadline
    _move_out(pki, code, planned)
    clock.set(deadline - timedelta(seconds=1))
    pki.publish_and_wait(full=False)  # a publish before the deadline ends nothing
    assert _recorded_loss(pki, auth.serial) is None
    # No publish from here: the sweep's own schedule records the loss at 00:00 JST.
    clock.set(deadline)
    loss = wait_for(lambda: _recorded_loss(pki, auth.serial), "the 00:00 JST sweep", timeout=10)
    assert loss.cause is LossCause.RESIDENT_CHANGE
    assert loss.time == deadline  # the clock stood at the deadline when it recorded


def test_article_34_1_loss_dated_when_recorded_so_as_of_answers_stand(
    pki: Pki, clock: FixedClock
) -> None:
    code = "31000000002"
    auth = pki.issue(CertKind.CARD_AUTH, resident_code=code, key=fresh_key())
    deadline = next_sweep(clock.now())
    _move_out(pki, code, deadline.astimezone(JST).date() - timedelta(days=31))
    pki.publish_and_wait(full=False)
    # The signer was not looking at midnight (down, or its clock stepped): it records
    # the loss an hour late. An answer about the half hour between was GOOD, and the
    # recording must not turn it into REVOKED afterwards.
    between = deadline + timedelta(minutes=30)
    late = deadline + timedelta(hours=1)
    clock.set(late)
    given = pki.check(CertKind.CARD_AUTH, auth.serial, between)
    assert given.status == GOOD
    wait_for(lambda: _recorded_loss(pki, auth.serial), "the late sweep", timeout=10)
    pki.publish_and_wait(full=False)
    assert pki.check(CertKind.CARD_AUTH, auth.serial, between).status == GOOD
    now = pki.check(CertKind.CARD_AUTH, auth.serial, late)
    assert now.status == REVOKED
    assert now.revocation.time.ToDatetime(tzinfo=UTC) == late
    # And a full snapshot (built from the registry anew) says the same.
    pki.publish_and_wait(full=True)
    assert pki.check(CertKind.CARD_AUTH, auth.serial, between).status == GOOD
