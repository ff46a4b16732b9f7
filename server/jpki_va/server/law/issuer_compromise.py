"""第14条, 第15条第1項第4号・第3項: an issuer key's compromise ends what it signed.

When a generation's key leaks, is lost or is damaged (漏えい、滅失又は毀損), every
certificate that key signed loses effect (cause 4, RFC 5280 cACompromise) at the
moment the compromise is recorded, and the compromise is announced (第15条第3項).
It is ONE registry fact per generation: no row per certificate, in the registry or
in the responder's index; the effect is computed where a certificate is looked at.

A mobile certificate whose card certificate lost effect this way follows it by the
cascade (第16条の13, 第35条の13: the card certificate lost effect by cause 4).
A loss recorded before the compromise stays the loss: loss is final.

This module imports only the vocabulary, so the registry and the responder both
apply the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jpki_va.core.domain import CertKind, CrlReason, Loss, LossCause, SluggedEnum

CARD_OF = {CertKind.MOBILE_SIGN: CertKind.CARD_SIGN, CertKind.MOBILE_AUTH: CertKind.CARD_AUTH}


class CompromiseNature(SluggedEnum):
    """Which of the three things 第14条 names happened to the key; wire values."""

    LEAKED = 1  # 漏えい
    LOST = 2  # 滅失
    DAMAGED = 3  # 毀損

    @property
    def in_law(self) -> str:
        return _NATURE_WORDS[self]


_NATURE_WORDS = {
    CompromiseNature.LEAKED: "発行者署名符号の漏えい (the issuing key was leaked)",
    CompromiseNature.LOST: "発行者署名符号の滅失 (the issuing key was lost)",
    CompromiseNature.DAMAGED: "発行者署名符号の毀損 (the issuing key was damaged)",
}
_UNSAID = "発行者署名符号の漏えい、滅失又は毀損 (the issuing key was leaked, lost or damaged)"


@dataclass(frozen=True)
class Compromise:
    """The registry fact: generation `key_id` of `kind` was compromised at `time`;
    `nature` is what happened to the key, when the operator said (None: not said)."""

    key_id: bytes
    kind: CertKind
    time: datetime
    nature: CompromiseNature | None = None

    def loss(self) -> Loss:
        return Loss(self.time, LossCause.ISSUER_KEY_COMPROMISE, CrlReason.CA_COMPROMISE)

    def cascaded_loss(self) -> Loss:
        return Loss(self.time, LossCause.CARD_CERT_LOST_EFFECT, CrlReason.CESSATION_OF_OPERATION)


def effective_loss(
    recorded: Loss | None,
    own: Compromise | None,
    card: Compromise | None,
    card_loss: Loss | None,
) -> tuple[Loss | None, bool]:
    """The loss that counts and whether it is a cascade from a compromised card.

    `own`: the compromise of the certificate's own issuer, if any; `card`: for a
    mobile certificate, the compromise of its card certificate's issuer, and
    `card_loss` that card certificate's recorded loss (an earlier one means the
    card did not lose effect by the compromise, so it cascaded by then already).
    """
    candidate: Loss | None = None
    cascaded = False
    if own is not None:
        candidate = own.loss()
    elif card is not None and (card_loss is None or card_loss.time > card.time):
        candidate, cascaded = card.cascaded_loss(), True
    if candidate is None or (recorded is not None and recorded.time <= candidate.time):
        return recorded, False
    return candidate, cascaded


# 公表 (第15条第3項, 第16条の14第3項, 第34条第3項, 第35条の14第3項; 業務方法書第5条(7)):
# the article each kind's announcement rests on, and the kind's name in the law.
ANNOUNCEMENT_ARTICLES = {
    CertKind.CARD_SIGN: ("第15条第1項第4号・第3項", "個人番号カード用署名用電子証明書"),
    CertKind.MOBILE_SIGN: ("第16条の14第1項第3号・第3項", "移動端末設備用署名用電子証明書"),
    CertKind.CARD_AUTH: ("第34条第1項第4号・第3項", "個人番号カード用利用者証明用電子証明書"),
    CertKind.MOBILE_AUTH: ("第35条の14第1項第3号・第3項", "移動端末設備用利用者証明用電子証明書"),
}


@dataclass(frozen=True)
class Generation:
    """How the public names an issuer generation: its CA certificate."""

    subject: str
    serial: int
    not_before: datetime
    not_after: datetime


def announcement(
    compromises: list[Compromise],
    generations: dict[bytes, Generation],
    *,
    published_at: datetime,
    arl_url: str,
) -> dict[str, Any]:
    """What the announcement says (第15条第3項 "その旨を公表"): for each compromised
    generation, which one, what happened and since when every certificate it signed
    has lost effect; and where the root's ARL, which vouches for it, is."""
    items = []
    for c in sorted(compromises, key=lambda c: (c.time, c.key_id)):
        article, law_name = ANNOUNCEMENT_ARTICLES[c.kind]
        gen = generations[c.key_id]
        items.append(
            {
                "kind": c.kind.slug,
                "certificates": law_name,
                "article": article,
                "generation": c.key_id.hex(),
                "issuer": gen.subject,
                "issuer_certificate_serial": f"{gen.serial:X}",
                "issuer_valid": [gen.not_before.isoformat(), gen.not_after.isoformat()],
                "what": _UNSAID if c.nature is None else c.nature.in_law,
                "since": c.time.isoformat(),
                "effect": f"この世代が署名した{law_name}は {c.time.isoformat()} に効力を失った "
                "(every certificate this generation signed lost effect then)",
            }
        )
    return {
        "title": "発行者署名符号の漏えい等による電子証明書の失効の公表",
        "published_at": published_at.isoformat(),
        "compromises": items,
        "arl": arl_url,
    }
