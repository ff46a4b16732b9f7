"""Which corresponding serials a mapping gives (第18条4項・5項, 第37条3項), and renewal.

* 第18条4項: CARD_SIGN -> the holder's MOBILE_SIGN serials whose validity period
  (第16条の4) has not passed, and MOBILE_SIGN -> CARD_SIGN (第5条).
* 第18条5項: CARD_AUTH -> CARD_SIGN (第5条) and CARD_SIGN -> CARD_AUTH (第24条).
* 第37条3項: CARD_AUTH -> MOBILE_AUTH (第35条の4) and MOBILE_AUTH -> CARD_AUTH (第24条).

The law filters by the validity period (有効期間) of the certificate returned, not
by loss of effect: a revoked certificate that has not expired is returned, with its
status. The mapping is about the person (当該署名利用者に係る…), so every such
certificate of the holder is returned, not only the one linked at issuance.

Renewal (old -> the certificates of the same kind that superseded it) is not a
provision of the law. We give it to whoever may receive the status of that kind (the
successor's serial tells no more than the superseded certificate's loss record
already implies) and count it apart, as RENEWAL_MAPPING, outside the nine provisions
of 第41条; the statuses that come with the serials are status provisions.
Who may receive each mapping is the entitlement matrix (law/entitlements.py).
"""

from __future__ import annotations

from datetime import datetime

from jpki_va.core.domain import CertKind, LinkType, Provision
from jpki_va.server.law.entitlements import mapping_provision, status_provision

_LEGAL: dict[frozenset[CertKind], LinkType] = {
    frozenset({CertKind.CARD_SIGN, CertKind.MOBILE_SIGN}): LinkType.CARD_SIGN_MOBILE_SIGN,
    frozenset({CertKind.CARD_AUTH, CertKind.CARD_SIGN}): LinkType.CARD_AUTH_CARD_SIGN,
    frozenset({CertKind.CARD_AUTH, CertKind.MOBILE_AUTH}): LinkType.CARD_AUTH_MOBILE_AUTH,
}


class NoSuchMapping(ValueError):
    """The law provides no mapping between the two kinds."""


def mapping_type(source: CertKind, target: CertKind) -> LinkType:
    """The mapping from `source` to `target`: one of the law's three, or renewal."""
    if source is target:
        return LinkType.RENEWAL
    found = _LEGAL.get(frozenset({source, target}))
    if found is None:
        raise NoSuchMapping(f"the law provides no mapping from {source.name} to {target.name}")
    return found


def targets(source: CertKind) -> tuple[CertKind, ...]:
    """Every kind a certificate of `source` maps to (its own kind: renewal)."""
    legal = [k for k in CertKind if k is not source and frozenset({source, k}) in _LEGAL]
    return (*legal, source)


def provision(source: CertKind, target: CertKind) -> Provision:
    """The provision whose entitlement a mapping from `source` to `target` needs."""
    if mapping_type(source, target) is LinkType.RENEWAL:
        return status_provision(source)
    return mapping_provision(source, target)


def counted_as(source: CertKind, target: CertKind) -> Provision:
    """What the ledger counts a mapping as: a provision of 第41条, or RENEWAL_MAPPING."""
    if mapping_type(source, target) is LinkType.RENEWAL:
        return Provision.RENEWAL_MAPPING
    return mapping_provision(source, target)


def validity_not_passed(not_after: datetime, now: datetime) -> bool:
    """有効期間が経過していない: the only filter the law puts on what a mapping returns."""
    return now <= not_after
