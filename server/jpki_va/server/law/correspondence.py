"""Which of a holder's certificates correspond (第18条第4項・第5項, 第37条第3項).

* CARD_SIGN ↔ MOBILE_SIGN (対応署名用電子証明書): the card certificate whose key
  signed the mobile application (第16条の2).
* CARD_AUTH ↔ MOBILE_AUTH (対応利用者証明用電子証明書): the card auth certificate
  in effect when the mobile auth certificate was issued (第35条の2).
* CARD_AUTH ↔ CARD_SIGN (対応証明書): the card certificates of one holder that
  were in effect at the same time (on one card). We do not track cards, so
  "at the same time" is the overlap of the periods in which each was in effect.

Which of these a verifier may receive, and the rule that only certificates whose
validity period has not passed are returned, belong to the serving side.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from jpki_va.core.domain import CertKind, Link, LinkType, micros
from jpki_va.server.model.registry_values import CertificateRecord


class LinkSubject(NamedTuple):
    """What the correspondences need of a certificate (small: a full snapshot holds many).

    Times are microseconds since the epoch (domain.micros), so a bulk reader can
    build one from a record's stored header without making datetimes.
    """

    kind: CertKind
    serial: int
    not_before: int
    not_after: int
    lost_at: int | None  # the effective loss
    card_serial: int | None

    @classmethod
    def of(cls, record: CertificateRecord) -> LinkSubject:
        lost_at = None if record.loss is None else micros(record.loss.time)
        return cls(
            record.kind,
            record.serial,
            micros(record.not_before),
            micros(record.not_after),
            lost_at,
            record.card_serial,
        )


_MOBILE_LINK = {
    CertKind.MOBILE_SIGN: (LinkType.CARD_SIGN_MOBILE_SIGN, CertKind.CARD_SIGN),
    CertKind.MOBILE_AUTH: (LinkType.CARD_AUTH_MOBILE_AUTH, CertKind.CARD_AUTH),
}


def _in_effect_overlap(a: LinkSubject, b: LinkSubject) -> bool:
    a_end = a.not_after if a.lost_at is None else min(a.not_after, a.lost_at)
    b_end = b.not_after if b.lost_at is None else min(b.not_after, b.lost_at)
    return max(a.not_before, b.not_before) < min(a_end, b_end)


def holder_links(certificates: Iterable[CertificateRecord | LinkSubject]) -> set[Link]:
    """Every correspondence among one holder's certificates."""
    links: set[Link] = set()
    auths: list[LinkSubject] = []
    signs: list[LinkSubject] = []
    # One pass (a full snapshot calls this for every holder of the country).
    for c in certificates:
        r = c if isinstance(c, LinkSubject) else LinkSubject.of(c)
        if r.kind is CertKind.CARD_AUTH:
            auths.append(r)
        elif r.kind is CertKind.CARD_SIGN:
            signs.append(r)
        elif r.card_serial is not None and (mobile := _MOBILE_LINK.get(r.kind)) is not None:
            link_type, card_kind = mobile
            links.add(Link(link_type, card_kind, r.card_serial, r.kind, r.serial))
    for a in auths:
        for s in signs:
            if _in_effect_overlap(a, s):
                links.add(Link(LinkType.CARD_AUTH_CARD_SIGN, a.kind, a.serial, s.kind, s.serial))
    return links
