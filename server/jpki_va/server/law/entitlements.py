"""Who may receive which provision: the matrix of DESIGN §7, as data and one function.

Each provision lists the alternatives that qualify; an alternative is a set of roles
the verifier must hold all of. Consent for signing records is the record rule's own
check, not an entitlement.

- 第18条1項・2項: signing status and CRL files go to 署名検証者等 (signing or group
  signing verifiers); 第37条1項・2項: auth status and CRL files to 利用者証明検証者.
- 第18条3項: signing records to 署名検証者等 (with the holder's consent).
- 第18条4項: CARD_SIGN <-> MOBILE_SIGN only to a 署名検証者 (not a group verifier).
- 第18条5項: CARD_AUTH <-> CARD_SIGN only to a 署名検証者 that is also a 利用者証明検証者
  (a group signing verifier that is an auth verifier does not qualify).
- 第37条3項: CARD_AUTH <-> MOBILE_AUTH to 利用者証明検証者.
- 第38条の3: the verifier token only to a 特定利用者証明検証者.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from jpki_va.core.domain import CertKind, Provision, Role, Verifier

_SIGNING = (frozenset({Role.SIGNING_VERIFIER}), frozenset({Role.GROUP_SIGNING_VERIFIER}))
_AUTH = (frozenset({Role.AUTH_VERIFIER}),)

# RENEWAL_MAPPING has no entry: a renewal is given to whoever may receive the status of
# its kind (law/mapping.py), and checked as that status provision.
ENTITLEMENTS: Mapping[Provision, tuple[frozenset[Role], ...]] = {
    Provision.SIGNING_STATUS: _SIGNING,
    Provision.SIGNING_CRL: _SIGNING,
    Provision.SIGNING_RECORD: _SIGNING,
    Provision.MAP_CARD_SIGN_MOBILE_SIGN: (frozenset({Role.SIGNING_VERIFIER}),),
    Provision.MAP_CARD_AUTH_CARD_SIGN: (frozenset({Role.SIGNING_VERIFIER, Role.AUTH_VERIFIER}),),
    Provision.AUTH_STATUS: _AUTH,
    Provision.AUTH_CRL: _AUTH,
    Provision.MAP_CARD_AUTH_MOBILE_AUTH: _AUTH,
    Provision.VERIFIER_TOKEN: (frozenset({Role.SPECIFIC_AUTH_VERIFIER}),),
}


class NotEntitled(Exception):
    """The verifier lacks a role the provision needs; the message names it."""


def check_entitled(verifier: Verifier, provision: Provision) -> None:
    """Return when `verifier` may receive `provision`; raise NotEntitled otherwise."""
    alternatives = ENTITLEMENTS[provision]
    roles = verifier.roles
    for needed in alternatives:  # a loop, not any(): no generator on every answer
        if needed <= roles:
            return
    wanted = " or ".join(
        " and ".join(sorted(r.name for r in needed - verifier.roles)) for needed in alternatives
    )
    raise NotEntitled(
        f"verifier {verifier.id!r} may not receive {provision.name}: missing role {wanted}"
    )


_STATUS_PROVISIONS = {
    kind: Provision.SIGNING_STATUS if kind.is_signing else Provision.AUTH_STATUS
    for kind in CertKind
}

#: The provision a status answer about a certificate of a kind is. Asked on every
#: status answer: the table's own lookup, a C call, not a function around it.
status_provision: Callable[[CertKind], Provision] = _STATUS_PROVISIONS.__getitem__


def crl_provision(kind: CertKind) -> Provision:
    return Provision.SIGNING_CRL if kind.is_signing else Provision.AUTH_CRL


_MAPPINGS = {
    frozenset({CertKind.CARD_SIGN, CertKind.MOBILE_SIGN}): Provision.MAP_CARD_SIGN_MOBILE_SIGN,
    frozenset({CertKind.CARD_AUTH, CertKind.CARD_SIGN}): Provision.MAP_CARD_AUTH_CARD_SIGN,
    frozenset({CertKind.CARD_AUTH, CertKind.MOBILE_AUTH}): Provision.MAP_CARD_AUTH_MOBILE_AUTH,
}


def mapping_provision(source: CertKind, target: CertKind) -> Provision:
    """The provision a mapping from `source` to `target` is; ValueError if the law has none."""
    found = _MAPPINGS.get(frozenset({source, target}))
    if found is None or source is target:
        raise ValueError(f"the law provides no mapping from {source.name} to {target.name}")
    return found
