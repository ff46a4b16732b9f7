"""第16条の13, 第35条の13: a mobile certificate loses effect with its card certificate.

When a card certificate loses effect by a recorded cause (第15条第1項第1号〜第4号,
第34条第1項第1号〜第4号), every mobile certificate of the same holder and purpose
loses effect with CARD_CERT_LOST_EFFECT, in the same registry transaction. Expiry
is not a recorded loss, so it never cascades. CARD_SIGN cascades to MOBILE_SIGN
only, CARD_AUTH to MOBILE_AUTH only. Each cascaded loss records which card
certificate ended and by which cause (the trigger), as the law's record of the
mobile loss names the card certificate's loss of effect.

An issuer compromise of the card's generation cascades without rows: see
issuer_compromise.py.
"""

from __future__ import annotations

from datetime import datetime

from jpki_va.core.domain import CertKind, Loss, LossCause
from jpki_va.server.law.loss_recording import DEFAULT_REASON
from jpki_va.server.law.registry_port import RegistryPort
from jpki_va.server.model.registry_values import CertificateRecord, LossEvent, LossTrigger

MOBILE_OF = {CertKind.CARD_SIGN: CertKind.MOBILE_SIGN, CertKind.CARD_AUTH: CertKind.MOBILE_AUTH}


def cascade_card_loss(
    tx: RegistryPort,
    card: CertificateRecord,
    loss: Loss,
    *,
    recorded_at: datetime | None = None,
) -> list[LossEvent]:
    """Record the cascade for `card`, which has just lost effect with `loss`."""
    mobile_kind = MOBILE_OF.get(card.kind)
    if mobile_kind is None or loss.cause is LossCause.CARD_CERT_LOST_EFFECT:
        return []
    cascaded = Loss(
        time=loss.time,
        cause=LossCause.CARD_CERT_LOST_EFFECT,
        reason=DEFAULT_REASON[LossCause.CARD_CERT_LOST_EFFECT],
    )
    trigger = LossTrigger(card.kind, card.serial, loss.cause)
    events = []
    for record in tx.holder_certificates(card.resident_code):
        if record.kind is mobile_kind and record.loss is None and record.not_after > loss.time:
            events.append(
                tx.record_loss(
                    record.kind,
                    record.serial,
                    cascaded,
                    recorded_at=recorded_at or loss.time,
                    trigger=trigger,
                )
            )
    return events
