"""Renewal: a new certificate of a kind supersedes the holder's earlier one of that kind.

A holder has at most one certificate of each kind in effect. Issuing a new one
ends the earlier one(s) of the same kind with RFC 5280 reason superseded, and the
registry keeps an old → new link (served later as a renewal mapping). The seed
law does not word this rule; the loss is recorded as the holder's request
(HOLDER_REQUEST, 第11条 / 第16条の10 / 第30条 / 第35条の10), because the new
application is the holder's own act, and like any card loss by causes 1 to 4 it
cascades to the mobile certificates of that purpose (第16条の13, 第35条の13).

Runs inside the write transaction that adds the new record.
"""

from __future__ import annotations

from datetime import datetime

from jpki_va.core.domain import CrlReason, Loss, LossCause
from jpki_va.server.law.mobile_cascade import cascade_card_loss
from jpki_va.server.law.registry_port import RegistryPort
from jpki_va.server.model.registry_values import CertificateRecord, LossEvent

RENEWAL_CAUSE = LossCause.HOLDER_REQUEST
RENEWAL_REASON = CrlReason.SUPERSEDED


def supersede_previous(tx: RegistryPort, new: CertificateRecord, now: datetime) -> list[LossEvent]:
    """End the holder's earlier certificates of `new.kind` still in effect; link them."""
    events: list[LossEvent] = []
    loss = Loss(time=now, cause=RENEWAL_CAUSE, reason=RENEWAL_REASON)
    for old in tx.holder_certificates(new.resident_code):
        if old.kind is not new.kind or old.serial == new.serial:
            continue
        if old.loss is not None or old.not_after <= now:
            continue
        event = tx.record_loss(old.kind, old.serial, loss, recorded_at=now)
        tx.put_renewal(old, new)
        events.append(event)
        ended = tx.certificate(old.kind, old.serial)
        assert ended is not None
        events.extend(cascade_card_loss(tx, ended, loss, recorded_at=now))
    return events
