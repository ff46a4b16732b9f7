"""One test per rule of the law, named after its article.

Each drives the signer through SignerService (gRPC on 127.0.0.1, SoftHSM2, LMDB)
and reads the answers through the responder's StatusService. The signer's clock is
a FixedClock the tests move; answers are asked "as of" that clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta

import grpc
import pytest

from jpki_va.core.clock import JST, FixedClock
from jpki_va.core.domain import CertKind, CrlReason, LinkType, LossCause, serial_to_bytes
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from jpki_va.server.law.resident_change import ResidentEvent, move_out_deadline
from tests.support import (
    Issued,
    Pki,
    fresh_key,
    register_verifier,
    running_pki,
    spki_of,
)

GOOD = va_pb2.CERT_STATUS_GOOD
REVOKED = va_pb2.CERT_STATUS_REVOKED


@pytest.fixture(scope="module")
def pki(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig, clock: FixedClock
) -> Iterator[Pki]:
    # The 00:00 JST sweep looks at the clock hourly, so within this module only a
    # publish or a resident event sweeps (test_article_31_timing.py tests the schedule).
    with running_pki(
        tmp_path_factory.mktemp("law"), softhsm_token, clock=clock, sweep_check=3600.0
    ) as running:
        yield running


_codes = iter(range(10_000))


def _resident() -> str:
    return f"{70000000000 + next(_codes):011d}"


class Holder:
    """One holder's four certificates, each with its own key pair (the CARD_SIGN's RSA:
    it signs the mobile applications; the others P-256, quicker to make)."""

    def __init__(self, pki: Pki, *, mobiles: bool = True) -> None:
        self.code = _resident()
        self.card_sign = pki.issue(CertKind.CARD_SIGN, resident_code=self.code)
        self.card_auth = pki.issue(CertKind.CARD_AUTH, resident_code=self.code, key=fresh_key())
        self.mobile_sign: Issued | None = None
        self.mobile_auth: Issued | None = None
        if mobiles:
            self.mobile_sign = pki.issue(
                CertKind.MOBILE_SIGN, resident_code=self.code, card=self.card_sign, key=fresh_key()
            )
            self.mobile_auth = pki.issue(
                CertKind.MOBILE_AUTH, resident_code=self.code, card=self.card_sign, key=fresh_key()
            )


def _status(pki: Pki, clock: FixedClock, cert: Issued | None) -> va_pb2.CertificateStatus:
    assert cert is not None
    return pki.check(cert.kind, cert.serial, clock.now())


def _event(
    pki: Pki,
    code: str,
    event: ResidentEvent,
    **fields: object,
) -> signer_pb2.RecordResidentEventResponse:
    return pki.signer_stub.RecordResidentEvent(
        signer_pb2.RecordResidentEventRequest(
            resident_code=code,
            event=int(event),  # type: ignore[arg-type]
            **fields,  # type: ignore[arg-type]
        ),
        timeout=30,
    )


def _changes(reply: object) -> set[tuple[int, int]]:
    return {(c.kind, c.cause) for c in reply.changes}  # type: ignore[attr-defined]


# 第12条 -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "event",
    [
        ResidentEvent.NAME_CHANGE,
        ResidentEvent.ADDRESS_CHANGE,
        ResidentEvent.BIRTH_DATE_CHANGE,
        ResidentEvent.SEX_CHANGE,
    ],
)
def test_article_12_amendment_ends_signing_certificates_not_auth(
    pki: Pki, clock: FixedClock, event: ResidentEvent
) -> None:
    holder = Holder(pki)
    reply = _event(pki, holder.code, event)
    assert _changes(reply) == {
        (CertKind.CARD_SIGN, LossCause.RESIDENT_CHANGE),
        (CertKind.MOBILE_SIGN, LossCause.CARD_CERT_LOST_EFFECT),
    }
    cascaded = next(c for c in reply.changes if CertKind(c.kind) is CertKind.MOBILE_SIGN)
    # 第16条の13: the mobile loss names the card certificate and its cause.
    assert CertKind(cascaded.trigger_kind) is CertKind.CARD_SIGN
    assert int.from_bytes(cascaded.trigger_serial, "big") == holder.card_sign.serial
    assert LossCause(cascaded.trigger_cause) is LossCause.RESIDENT_CHANGE
    pki.publish_and_wait(full=False)
    card = _status(pki, clock, holder.card_sign)
    assert card.status == REVOKED
    assert LossCause(card.revocation.cause) is LossCause.RESIDENT_CHANGE
    assert CrlReason(card.revocation.reason) is CrlReason.AFFILIATION_CHANGED
    mobile = _status(pki, clock, holder.mobile_sign)
    assert mobile.status == REVOKED
    assert LossCause(mobile.revocation.cause) is LossCause.CARD_CERT_LOST_EFFECT
    # An address change (or any amendment) alone leaves the auth certificates in effect.
    assert _status(pki, clock, holder.card_auth).status == GOOD
    assert _status(pki, clock, holder.mobile_auth).status == GOOD


def test_article_12_minor_correction_ends_nothing(pki: Pki, clock: FixedClock) -> None:
    holder = Holder(pki, mobiles=False)
    reply = _event(pki, holder.code, ResidentEvent.NAME_CHANGE, minor=True)
    assert not reply.changes
    pki.publish_and_wait(full=False)
    assert _status(pki, clock, holder.card_sign).status == GOOD


def test_article_12_and_31_deletion_not_by_move_out_ends_both(pki: Pki, clock: FixedClock) -> None:
    holder = Holder(pki)
    reply = _event(pki, holder.code, ResidentEvent.RECORD_DELETED)
    assert _changes(reply) == {
        (CertKind.CARD_SIGN, LossCause.RESIDENT_CHANGE),
        (CertKind.CARD_AUTH, LossCause.RESIDENT_CHANGE),
        (CertKind.MOBILE_SIGN, LossCause.CARD_CERT_LOST_EFFECT),
        (CertKind.MOBILE_AUTH, LossCause.CARD_CERT_LOST_EFFECT),
    }
    pki.publish_and_wait(full=False)
    for cert in (holder.card_sign, holder.card_auth, holder.mobile_sign, holder.mobile_auth):
        assert _status(pki, clock, cert).status == REVOKED


def test_article_12_deletion_by_move_out_ends_signing_only(pki: Pki, clock: FixedClock) -> None:
    holder = Holder(pki, mobiles=False)
    reply = _event(pki, holder.code, ResidentEvent.RECORD_DELETED, deletion_by_move_out=True)
    assert _changes(reply) == {(CertKind.CARD_SIGN, LossCause.RESIDENT_CHANGE)}
    pki.publish_and_wait(full=False)
    assert _status(pki, clock, holder.card_sign).status == REVOKED
    assert _status(pki, clock, holder.card_auth).status == GOOD


def test_article_31_move_in_within_30_days_keeps_auth(pki: Pki, clock: FixedClock) -> None:
    holder = Holder(pki, mobiles=False)
    planned = clock.now().astimezone(JST).date() - timedelta(days=10)
    _event(pki, holder.code, ResidentEvent.MOVE_OUT, planned_date=planned.isoformat())
    assert not _event(pki, holder.code, ResidentEvent.MOVE_IN).changes
    with pytest.raises(grpc.RpcError) as info:  # nothing pending any more
        _event(pki, holder.code, ResidentEvent.MOVE_IN)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no move-out notice" in (info.value.details() or "")
    pki.publish_and_wait(full=False)
    assert _status(pki, clock, holder.card_auth).status == GOOD


# 第16条の13, 第35条の13 -----------------------------------------------------------------------
def test_article_16_13_and_35_13_card_loss_cascades_by_purpose_not_by_expiry(
    pki: Pki, clock: FixedClock
) -> None:
    holder = Holder(pki)
    assert holder.mobile_auth is not None and holder.mobile_sign is not None
    reply = pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_AUTH,
            serial=serial_to_bytes(holder.card_auth.serial),
            cause=va_pb2.LOSS_CAUSE_RECORD_ERROR,
        ),
        timeout=30,
    )
    # CARD_AUTH cascades to MOBILE_AUTH only, in the same transaction.
    assert _changes(reply) == {
        (CertKind.CARD_AUTH, LossCause.RECORD_ERROR),
        (CertKind.MOBILE_AUTH, LossCause.CARD_CERT_LOST_EFFECT),
    }
    mobile = next(c for c in reply.changes if CertKind(c.kind) is CertKind.MOBILE_AUTH)
    assert LossCause(mobile.trigger_cause) is LossCause.RECORD_ERROR
    pki.publish_and_wait(full=False)
    assert _status(pki, clock, holder.mobile_auth).status == REVOKED
    assert _status(pki, clock, holder.mobile_sign).status == GOOD
    # Expiry is no recorded loss: after the card's validity both are EXPIRED, not REVOKED.
    later = holder.card_sign.certificate.not_valid_after_utc + timedelta(days=1)
    assert pki.check(CertKind.CARD_SIGN, holder.card_sign.serial, later).status == (
        va_pb2.CERT_STATUS_EXPIRED
    )
    assert pki.check(CertKind.MOBILE_SIGN, holder.mobile_sign.serial, later).status == (
        va_pb2.CERT_STATUS_EXPIRED
    )


# renewal --------------------------------------------------------------------------------
def test_renewal_supersedes_the_previous_certificate_and_links_them(
    pki: Pki, clock: FixedClock
) -> None:
    holder = Holder(pki)
    assert holder.mobile_sign is not None
    reply = pki.signer_stub.IssueCertificate(
        signer_pb2.IssueCertificateRequest(
            kind=va_pb2.CERT_KIND_CARD_SIGN,
            resident_code=holder.code,
            municipality_code="131016",
            holder=signer_pb2.HolderInfo(
                name="試験 太郎", address="千代田区1-1", birth_date="1990-01-01", sex="男"
            ),
            public_key_der=spki_of(fresh_key()),
        ),
        timeout=30,
    )
    new_serial = int.from_bytes(reply.serial, "big")
    assert {
        (
            CertKind(c.kind),
            int.from_bytes(c.serial, "big"),
            LossCause(c.cause),
            CrlReason(c.reason),
        )
        for c in reply.superseded
    } == {
        (
            CertKind.CARD_SIGN,
            holder.card_sign.serial,
            LossCause.HOLDER_REQUEST,
            CrlReason.SUPERSEDED,
        ),
        (
            CertKind.MOBILE_SIGN,
            holder.mobile_sign.serial,
            LossCause.CARD_CERT_LOST_EFFECT,
            CrlReason.CESSATION_OF_OPERATION,
        ),
    }
    pki.publish_and_wait(full=False)
    old = _status(pki, clock, holder.card_sign)
    assert old.status == REVOKED
    assert CrlReason(old.revocation.reason) is CrlReason.SUPERSEDED
    assert pki.check(CertKind.CARD_SIGN, new_serial, clock.now()).status == GOOD
    with pki.live_index() as index:
        links = index.links(CertKind.CARD_SIGN, holder.card_sign.serial)
    assert any(
        link.type is LinkType.RENEWAL
        and (link.a_serial, link.b_serial) == (holder.card_sign.serial, new_serial)
        for link in links
    )


# 第18条第3項 ------------------------------------------------------------------------------
def test_article_18_3_consent_per_verifier_grant_and_withdraw(pki: Pki, clock: FixedClock) -> None:
    holder = Holder(pki, mobiles=False)
    register_verifier(pki, "bank-a")  # consent is given to a registered verifier only

    def consent(grant: bool, verifier: str = "bank-a") -> signer_pb2.RecordConsentResponse:
        return pki.signer_stub.RecordConsent(
            signer_pb2.RecordConsentRequest(
                resident_code=holder.code, verifier=verifier, grant=grant
            ),
            timeout=30,
        )

    def index_view() -> tuple[bool, bool, object]:
        with pki.live_index() as index:
            serial = holder.card_sign.serial
            return (
                index.consent(CertKind.CARD_SIGN, serial, "bank-a"),
                index.consent(CertKind.CARD_SIGN, serial, "bank-b"),
                index.signing_record(CertKind.CARD_SIGN, serial),
            )

    with pytest.raises(grpc.RpcError) as info:
        consent(False)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert consent(True).consent.verifier == "bank-a"
    pki.publish_and_wait(full=False)
    granted_a, granted_b, record = index_view()
    assert (granted_a, granted_b) == (True, False)
    assert record is not None
    assert record.name == "試験 太郎"  # type: ignore[attr-defined]
    assert not hasattr(record, "resident_code")
    shown = pki.signer_stub.ListConsents(
        signer_pb2.ListConsentsRequest(resident_code=holder.code), timeout=30
    )
    assert [c.verifier for c in shown.consents] == ["bank-a"]
    withdrawn = consent(False)
    assert withdrawn.consent.HasField("withdrawn_at")
    pki.publish_and_wait(full=False)  # withdrawal takes effect in the next snapshot
    assert index_view() == (False, False, None)
    # And a full snapshot does not bring it back.
    pki.publish_and_wait(full=True)
    assert index_view() == (False, False, None)


# 第31条 (last: these move the clock forward) ----------------------------------------------
def test_article_31_2_move_in_after_the_deadline_does_not_undo_the_loss(
    pki: Pki, clock: FixedClock
) -> None:
    holder = Holder(pki)
    assert holder.mobile_auth is not None
    planned = clock.now().astimezone(JST).date() - timedelta(days=30)
    deadline = move_out_deadline(planned)
    _event(pki, holder.code, ResidentEvent.MOVE_OUT, planned_date=planned.isoformat())
    # The deadline passes and no sweep has run yet; then the move-in is recorded.
    late = deadline + timedelta(hours=2)
    clock.set(late)
    reply = _event(pki, holder.code, ResidentEvent.MOVE_IN)
    assert _changes(reply) == {
        (CertKind.CARD_AUTH, LossCause.RESIDENT_CHANGE),
        (CertKind.MOBILE_AUTH, LossCause.CARD_CERT_LOST_EFFECT),
    }
    pki.publish_and_wait(full=False)
    auth = _status(pki, clock, holder.card_auth)
    assert auth.status == REVOKED
    # Dated when recorded (第34条第1項第2号), not back at the deadline.
    assert auth.revocation.time.ToDatetime(tzinfo=UTC) == late
    assert _status(pki, clock, holder.card_sign).status == GOOD
    # The notice is closed: a second move-in has nothing to close.
    with pytest.raises(grpc.RpcError) as info:
        _event(pki, holder.code, ResidentEvent.MOVE_IN)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_article_31_auth_ends_when_30_days_pass_after_planned_move_out(
    pki: Pki, clock: FixedClock
) -> None:
    holder = Holder(pki)
    assert holder.mobile_auth is not None
    # Planned 30 days ago (Japan date): day 30 ends at the coming midnight, JST.
    planned = clock.now().astimezone(JST).date() - timedelta(days=30)
    deadline = move_out_deadline(planned)
    assert deadline > clock.now()
    reply = _event(pki, holder.code, ResidentEvent.MOVE_OUT, planned_date=planned.isoformat())
    assert not reply.changes
    assert reply.move_out_deadline.ToDatetime(tzinfo=UTC) == deadline
    clock.set(deadline - timedelta(microseconds=1))
    pki.publish_and_wait(full=False)  # the sweep runs before every publish
    assert _status(pki, clock, holder.card_auth).status == GOOD
    clock.set(deadline)
    pki.publish_and_wait(full=False)
    auth = _status(pki, clock, holder.card_auth)
    assert auth.status == REVOKED
    assert LossCause(auth.revocation.cause) is LossCause.RESIDENT_CHANGE
    assert auth.revocation.time.ToDatetime(tzinfo=UTC) == deadline
    mobile = _status(pki, clock, holder.mobile_auth)
    assert LossCause(mobile.revocation.cause) is LossCause.CARD_CERT_LOST_EFFECT
    # A move-out affects no signing certificate by itself (its deletion would).
    assert _status(pki, clock, holder.card_sign).status == GOOD


# 第11条 (and 第16条の10, 第30条, 第35条の10) ------------------------------------------------
def test_article_11_the_record_tells_the_application_from_the_notification(pki: Pki) -> None:
    holder = Holder(pki, mobiles=False)

    def lose(cert: Issued, cause: int, request: int) -> signer_pb2.RecordLossResponse:
        return pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=int(cert.kind),  # type: ignore[arg-type]
                serial=serial_to_bytes(cert.serial),
                cause=cause,  # type: ignore[arg-type]
                holder_request=request,  # type: ignore[arg-type]
            ),
            timeout=30,
        )

    # A holder request with another cause is refused, and records nothing.
    with pytest.raises(grpc.RpcError) as info:
        lose(
            holder.card_auth, va_pb2.LOSS_CAUSE_RECORD_ERROR, signer_pb2.HOLDER_REQUEST_NOTIFICATION
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "goes with HOLDER_REQUEST" in (info.value.details() or "")
    reply = lose(
        holder.card_sign, va_pb2.LOSS_CAUSE_HOLDER_REQUEST, signer_pb2.HOLDER_REQUEST_NOTIFICATION
    )
    assert reply.changes[0].holder_request == signer_pb2.HOLDER_REQUEST_NOTIFICATION
    # Unsaid: the application (申請), the common case.
    reply = lose(holder.card_auth, va_pb2.LOSS_CAUSE_HOLDER_REQUEST, 0)
    assert reply.changes[0].holder_request == signer_pb2.HOLDER_REQUEST_APPLICATION
    with pki.signer.registry.read() as tx:
        assert tx.holder_request(CertKind.CARD_SIGN, holder.card_sign.serial) == "NOTIFICATION"
        assert tx.holder_request(CertKind.CARD_AUTH, holder.card_auth.serial) == "APPLICATION"
