"""The entitlement matrix (DESIGN §7, 第18条, 第37条, 第38条の3) for every role set."""

from __future__ import annotations

from datetime import date
from itertools import combinations

import pytest

from jpki_va.core.domain import CertKind, Provision, Role, Verifier
from jpki_va.server.law.entitlements import (
    NotEntitled,
    check_entitled,
    crl_provision,
    mapping_provision,
    status_provision,
)
from jpki_va.server.law.errors import Refused
from jpki_va.server.law.token_grant import check_token_request

S, G, A, X = (
    Role.SIGNING_VERIFIER,
    Role.GROUP_SIGNING_VERIFIER,
    Role.AUTH_VERIFIER,
    Role.SPECIFIC_AUTH_VERIFIER,
)
ROLE_SETS = [frozenset(c) for n in range(5) for c in combinations(Role, n)]


def expected(provision: Provision, roles: frozenset[Role]) -> bool:
    """The table of DESIGN §7, written out independently of the module under test."""
    if provision in (Provision.SIGNING_STATUS, Provision.SIGNING_CRL, Provision.SIGNING_RECORD):
        return S in roles or G in roles
    if provision in (Provision.AUTH_STATUS, Provision.AUTH_CRL):
        return A in roles
    if provision is Provision.MAP_CARD_SIGN_MOBILE_SIGN:
        return S in roles  # 第18条4項: 署名検証者 only, not a group verifier
    if provision is Provision.MAP_CARD_AUTH_CARD_SIGN:
        return S in roles and A in roles  # 第18条5項: group + auth does not qualify
    if provision is Provision.MAP_CARD_AUTH_MOBILE_AUTH:
        return A in roles
    if provision is Provision.VERIFIER_TOKEN:
        return X in roles
    raise AssertionError(provision)


@pytest.mark.parametrize("provision", [p for p in Provision if p.in_law])
@pytest.mark.parametrize(
    "roles", ROLE_SETS, ids=lambda r: "+".join(sorted(x.slug for x in r)) or "none"
)
def test_matrix(provision: Provision, roles: frozenset[Role]) -> None:
    verifier = Verifier("v", roles, (b"\0" * 32,))
    if expected(provision, roles):
        check_entitled(verifier, provision)
    else:
        with pytest.raises(NotEntitled, match="missing role"):
            check_entitled(verifier, provision)


def test_refusal_names_the_missing_roles() -> None:
    group_auth = Verifier("bank", frozenset({G, A}), (b"\0" * 32,))
    with pytest.raises(NotEntitled) as info:
        check_entitled(group_auth, Provision.MAP_CARD_AUTH_CARD_SIGN)
    assert "SIGNING_VERIFIER" in str(info.value)
    assert "'bank'" in str(info.value)
    signing = Verifier("city", frozenset({S}), (b"\0" * 32,))
    with pytest.raises(NotEntitled, match="AUTH_VERIFIER"):
        check_entitled(signing, Provision.AUTH_STATUS)


def test_provision_of_each_kind_and_mapping() -> None:
    assert status_provision(CertKind.MOBILE_SIGN) is Provision.SIGNING_STATUS
    assert status_provision(CertKind.MOBILE_AUTH) is Provision.AUTH_STATUS
    assert crl_provision(CertKind.CARD_SIGN) is Provision.SIGNING_CRL
    assert crl_provision(CertKind.CARD_AUTH) is Provision.AUTH_CRL
    pairs = {
        (CertKind.CARD_SIGN, CertKind.MOBILE_SIGN): Provision.MAP_CARD_SIGN_MOBILE_SIGN,
        (CertKind.CARD_AUTH, CertKind.CARD_SIGN): Provision.MAP_CARD_AUTH_CARD_SIGN,
        (CertKind.CARD_AUTH, CertKind.MOBILE_AUTH): Provision.MAP_CARD_AUTH_MOBILE_AUTH,
    }
    for (a, b), provision in pairs.items():
        assert mapping_provision(a, b) is provision
        assert mapping_provision(b, a) is provision  # both directions
    for a, b in (
        (CertKind.MOBILE_SIGN, CertKind.MOBILE_AUTH),
        (CertKind.CARD_SIGN, CertKind.CARD_SIGN),
    ):
        with pytest.raises(ValueError, match="no mapping"):
            mapping_provision(a, b)


def test_token_needs_the_role_and_an_agreement_in_effect() -> None:
    prints = (b"\0" * 32,)
    today = date(2026, 6, 1)
    check_token_request(Verifier("ok", frozenset({X}), prints, agreement="AG-1"), today)
    with pytest.raises(Refused, match="取決め"):
        check_token_request(Verifier("no-agreement", frozenset({X}), prints), today)
    with pytest.raises(NotEntitled, match="SPECIFIC_AUTH_VERIFIER"):
        check_token_request(Verifier("auth", frozenset({A}), prints, agreement="AG-1"), today)
    period = Verifier(
        "p", frozenset({X}), prints, agreement="AG-2", agreement_date="2026-04-01",
        agreement_terms="terms v1", agreement_until="2027-03-31",
    )  # fmt: skip
    check_token_request(period, date(2026, 4, 1))
    check_token_request(period, date(2027, 3, 31))
    with pytest.raises(Refused, match="takes effect on 2026-04-01"):
        check_token_request(period, date(2026, 3, 31))
    with pytest.raises(Refused, match="ended on 2027-03-31"):
        check_token_request(period, date(2027, 4, 1))
