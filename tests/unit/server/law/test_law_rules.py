"""Unit tests of the rules in server/law/ (pure functions; the articles' integration
tests drive the same rules through the signer and the responder)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from jpki_va.core.clock import JST
from jpki_va.core.domain import (
    CertKind,
    CrlReason,
    Link,
    LinkType,
    Loss,
    LossCause,
    Provision,
    Status,
)
from jpki_va.server.law import mapping
from jpki_va.server.law.correspondence import holder_links
from jpki_va.server.law.errors import Refused
from jpki_va.server.law.issuer_compromise import Compromise, effective_loss
from jpki_va.server.law.resident_change import (
    ResidentEvent,
    ResidentEventFacts,
    kinds_ended,
    move_out_deadline,
    move_out_lapsed,
    next_sweep,
)
from jpki_va.server.law.retention import RECORD_TYPES, RetentionPolicy, loss_kept
from jpki_va.server.law.signing_record import check_disclosable
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import CertificateRecord

T0 = datetime(2026, 4, 1, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("facts", "ended"),
    [
        (ResidentEventFacts(ResidentEvent.NAME_CHANGE), {CertKind.CARD_SIGN}),
        (ResidentEventFacts(ResidentEvent.ADDRESS_CHANGE), {CertKind.CARD_SIGN}),
        (ResidentEventFacts(ResidentEvent.BIRTH_DATE_CHANGE), {CertKind.CARD_SIGN}),
        (ResidentEventFacts(ResidentEvent.SEX_CHANGE), {CertKind.CARD_SIGN}),
        (ResidentEventFacts(ResidentEvent.ADDRESS_CHANGE, minor=True), set()),
        (
            ResidentEventFacts(ResidentEvent.RECORD_DELETED),
            {CertKind.CARD_SIGN, CertKind.CARD_AUTH},
        ),
        (
            ResidentEventFacts(ResidentEvent.RECORD_DELETED, deletion_by_move_out=True),
            {CertKind.CARD_SIGN},
        ),
        (ResidentEventFacts(ResidentEvent.MOVE_OUT, planned_date=date(2026, 4, 1)), set()),
        (ResidentEventFacts(ResidentEvent.MOVE_IN), set()),
    ],
)
def test_articles_12_and_31_which_card_kinds_end(
    facts: ResidentEventFacts, ended: set[CertKind]
) -> None:
    assert kinds_ended(facts) == ended
    # Mobile certificates never end by a resident event directly (only by the cascade).
    assert not any(kind.is_mobile for kind in kinds_ended(facts))


@pytest.mark.parametrize(
    ("facts", "fragment"),
    [
        (ResidentEventFacts(ResidentEvent.RECORD_DELETED, minor=True), "--minor"),
        (ResidentEventFacts(ResidentEvent.MOVE_OUT), "planned move-out date"),
        (
            ResidentEventFacts(ResidentEvent.NAME_CHANGE, planned_date=date(2026, 1, 1)),
            "planned date",
        ),
        (
            ResidentEventFacts(ResidentEvent.NAME_CHANGE, deletion_by_move_out=True),
            "deletion-by-move-out",
        ),
    ],
)
def test_resident_event_facts_that_make_no_sense_are_refused(
    facts: ResidentEventFacts, fragment: str
) -> None:
    with pytest.raises(Refused, match=fragment):
        kinds_ended(facts)


def test_article_31_thirty_days_end_at_the_start_of_day_31_japan_time() -> None:
    planned = date(2026, 3, 1)
    deadline = move_out_deadline(planned)
    # Day 1 is 2 March; day 30 is 31 March; it has passed at 1 April 00:00 JST.
    assert deadline == datetime(2026, 4, 1, tzinfo=JST)
    assert deadline == datetime(2026, 3, 31, 15, tzinfo=UTC)
    assert not move_out_lapsed(planned, deadline - timedelta(microseconds=1))
    assert move_out_lapsed(planned, deadline)


def test_article_31_sweep_is_due_at_every_midnight_japan_time() -> None:
    # Deadlines fall at 00:00 JST, so a sweep then records a loss as it falls due.
    assert next_sweep(datetime(2026, 3, 31, 14, 59, tzinfo=UTC)) == datetime(2026, 4, 1, tzinfo=JST)
    midnight = datetime(2026, 4, 1, tzinfo=JST)
    assert next_sweep(midnight) == datetime(2026, 4, 2, tzinfo=JST)
    assert next_sweep(midnight - timedelta(microseconds=1)) == midnight
    assert next_sweep(midnight) == move_out_deadline(date(2026, 3, 2))


def test_article_14_effective_loss() -> None:
    compromise = Compromise(b"k" * 20, CertKind.CARD_SIGN, T0)
    earlier = Loss(T0 - timedelta(days=1), LossCause.HOLDER_REQUEST, CrlReason.UNSPECIFIED)
    later = Loss(T0 + timedelta(days=1), LossCause.RECORD_ERROR, CrlReason.UNSPECIFIED)
    assert effective_loss(None, compromise, None, None) == (compromise.loss(), False)
    assert effective_loss(earlier, compromise, None, None) == (earlier, False)
    assert effective_loss(later, compromise, None, None) == (compromise.loss(), False)
    # A mobile certificate follows its compromised card (第16条の13, cause 4)...
    loss, cascaded = effective_loss(None, None, compromise, None)
    assert cascaded and loss is not None
    assert loss.cause is LossCause.CARD_CERT_LOST_EFFECT and loss.time == T0
    # ...unless the card had lost effect before: its cascade happened then.
    assert effective_loss(None, None, compromise, earlier) == (None, False)
    assert compromise.loss().reason is CrlReason.CA_COMPROMISE


def test_retention_policy() -> None:
    policy = RetentionPolicy(
        issuance_record=timedelta(days=10), loss_record=timedelta(days=2), crl_file=timedelta(1)
    )
    card = CertKind.CARD_AUTH
    # Issuance must outlast the validity plus the loss record's period (8 + 2 = 10).
    with pytest.raises(ValueError, match=r"第27条.* at least the validity period"):
        policy.check({card: timedelta(days=9)})
    policy.check({card: timedelta(days=8)})
    with pytest.raises(ValueError, match="positive"):
        RetentionPolicy(loss_record=timedelta(0)).check({})
    assert policy.issuance_retained(card, T0, T0 + timedelta(days=10) - timedelta(seconds=1))
    assert not policy.issuance_retained(card, T0, T0 + timedelta(days=10))
    # A CRL entry stays until expiry even when the loss record's retention is over.
    cause = LossCause.HOLDER_REQUEST
    assert policy.loss_retained(card, cause, T0, T0 + timedelta(days=5), T0 + timedelta(days=3))
    assert not policy.loss_retained(card, cause, T0, T0 + timedelta(days=1), T0 + timedelta(2))
    assert policy.loss_retained(card, cause, T0, T0 + timedelta(1), T0 + timedelta(1, hours=1))
    # The same rule on the raw timestamps a full publish compares (cutoff = now - 2 days).
    assert loss_kept(0, 5, 3, 1) and loss_kept(2, 1, 3, 1)
    assert not loss_kept(0, 1, 2, 0) and not loss_kept(1, 3, 3, 1)


def test_retention_one_period_per_record_type_named_by_its_article() -> None:
    policy = RetentionPolicy(
        periods={"loss.record-error.mobile-auth": timedelta(days=30), "ledger": timedelta(3)}
    )
    assert policy.loss(CertKind.MOBILE_AUTH, LossCause.RECORD_ERROR) == timedelta(days=30)
    assert policy.loss(CertKind.CARD_AUTH, LossCause.RECORD_ERROR) == policy.loss_record
    assert policy.project("ledger") == timedelta(3)
    assert RECORD_TYPES["loss.record-error.mobile-auth"] == "第35条の11"
    assert RECORD_TYPES["issuance.mobile-sign"] == "第16条の7"
    assert RECORD_TYPES["crl.mobile-auth"] == "第35条の15"
    # A longer loss period of one cause raises what the issuance records need.
    longer = RetentionPolicy(
        issuance_record=timedelta(days=400),
        loss_record=timedelta(days=10),
        periods={"loss.resident-change.card-auth": timedelta(days=100)},
    )
    longer.check({CertKind.CARD_SIGN: timedelta(days=390)})
    with pytest.raises(ValueError, match="CARD_AUTH issuance"):
        longer.check({CertKind.CARD_AUTH: timedelta(days=390)})
    with pytest.raises(ValueError, match=r"no record type 'loss\.typo'"):
        RetentionPolicy(periods={"loss.typo": timedelta(1)})


def _record(
    kind: CertKind,
    serial: int,
    *,
    start: int = 0,
    end: int = 1000,
    card: int | None = None,
    lost_at: int | None = None,
) -> CertificateRecord:
    return CertificateRecord(
        kind=kind,
        serial=serial,
        issuer_key_id=b"i" * 20,
        resident_code="12345678901",
        partition="131016",
        holder=Holder("n", "a", "2000-01-01", "s"),
        not_before=T0 + timedelta(days=start),
        not_after=T0 + timedelta(days=end),
        certificate_der=b"",
        loss=None
        if lost_at is None
        else Loss(T0 + timedelta(days=lost_at), LossCause.HOLDER_REQUEST, CrlReason.SUPERSEDED),
        card_serial=card,
    )


def test_correspondences_of_one_holder() -> None:
    sign_old = _record(CertKind.CARD_SIGN, 1, start=0, lost_at=100)
    sign_new = _record(CertKind.CARD_SIGN, 2, start=100)
    auth = _record(CertKind.CARD_AUTH, 3, start=150)
    mobile_sign = _record(CertKind.MOBILE_SIGN, 4, start=120, card=2)
    mobile_auth = _record(CertKind.MOBILE_AUTH, 5, start=160, card=3)
    links = holder_links([sign_old, sign_new, auth, mobile_sign, mobile_auth])
    assert links == {
        Link(LinkType.CARD_SIGN_MOBILE_SIGN, CertKind.CARD_SIGN, 2, CertKind.MOBILE_SIGN, 4),
        Link(LinkType.CARD_AUTH_MOBILE_AUTH, CertKind.CARD_AUTH, 3, CertKind.MOBILE_AUTH, 5),
        # Only the signing certificate in effect while the auth one was.
        Link(LinkType.CARD_AUTH_CARD_SIGN, CertKind.CARD_AUTH, 3, CertKind.CARD_SIGN, 2),
    }


# 第18条4項・5項, 第37条3項: mappings -------------------------------------------------------
def test_mapping_types_targets_and_provisions() -> None:
    assert mapping.mapping_type(CertKind.MOBILE_AUTH, CertKind.CARD_AUTH) is (
        LinkType.CARD_AUTH_MOBILE_AUTH
    )
    assert mapping.mapping_type(CertKind.CARD_AUTH, CertKind.CARD_AUTH) is LinkType.RENEWAL
    with pytest.raises(mapping.NoSuchMapping, match="MOBILE_SIGN to MOBILE_AUTH"):
        mapping.mapping_type(CertKind.MOBILE_SIGN, CertKind.MOBILE_AUTH)
    assert set(mapping.targets(CertKind.CARD_SIGN)) == {
        CertKind.MOBILE_SIGN,
        CertKind.CARD_AUTH,
        CertKind.CARD_SIGN,
    }
    assert set(mapping.targets(CertKind.MOBILE_SIGN)) == {CertKind.CARD_SIGN, CertKind.MOBILE_SIGN}
    # Renewal is counted as status of its kind; the others as the law's mappings.
    assert mapping.provision(CertKind.MOBILE_SIGN, CertKind.MOBILE_SIGN) is (
        Provision.SIGNING_STATUS
    )
    assert mapping.provision(CertKind.CARD_SIGN, CertKind.CARD_AUTH) is (
        Provision.MAP_CARD_AUTH_CARD_SIGN
    )


def test_mapping_filters_by_the_validity_period_only() -> None:
    assert mapping.validity_not_passed(T0, T0)  # its last moment is still within the period
    assert not mapping.validity_not_passed(T0, T0 + timedelta(microseconds=1))


# 第18条3項: signing records -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "status", "consented", "refusal"),
    [
        (CertKind.CARD_SIGN, "GOOD", True, None),
        (CertKind.MOBILE_SIGN, "NOT_YET_VALID", True, None),  # has not lost effect
        (CertKind.CARD_SIGN, "REVOKED", True, "revoked"),
        (CertKind.CARD_SIGN, "EXPIRED", True, "expired"),
        (CertKind.CARD_SIGN, "GOOD", False, "not consented"),
        (CertKind.CARD_AUTH, "GOOD", True, "not a signing certificate"),
    ],
)
def test_signing_record_rule(
    kind: CertKind, status: str, consented: bool, refusal: str | None
) -> None:
    if refusal is None:
        check_disclosable(kind, Status[status], consented)
    else:
        with pytest.raises((Refused, ValueError), match=refusal):
            check_disclosable(kind, Status[status], consented)
