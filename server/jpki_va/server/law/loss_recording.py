"""Which losses an operator records directly, and the RFC 5280 reason each gets.

Holder requests (第11条, 第16条の10, 第30条, 第35条の10) and record errors (第13条,
第16条の11, 第32条, 第35条の11) are recorded by an operator. Resident changes come
from resident events (第12条, 第31条), issuer compromise from its own fact (第14条),
and CARD_CERT_LOST_EFFECT only from the cascade (第16条の13, 第35条の13).
"""

from __future__ import annotations

from jpki_va.core.domain import CrlReason, LossCause, SluggedEnum
from jpki_va.server.law.errors import Refused


class HolderRequest(SluggedEnum):
    """Which request of the holder a HOLDER_REQUEST loss records (第11条 and its twins
    record 申請があった旨 or 届出があった旨)."""

    APPLICATION = 1  # 失効の申請 (第9条第1項, 第16条の8, 第28条, 第35条の8)
    NOTIFICATION = 2  # 届出 (第10条第1項, 第16条の9, 第29条, 第35条の9)


def holder_request_of(cause: LossCause, given: HolderRequest | None) -> HolderRequest | None:
    """The request to record with a loss of `cause`: given, or the application."""
    if cause is not LossCause.HOLDER_REQUEST:
        if given is not None:
            raise Refused(
                f"a holder request (申請 or 届出) goes with HOLDER_REQUEST, not {cause.slug}"
            )
        return None
    return given or HolderRequest.APPLICATION


OPERATOR_CAUSES = (LossCause.HOLDER_REQUEST, LossCause.RECORD_ERROR)
OPERATOR_REASONS = (
    CrlReason.UNSPECIFIED,
    CrlReason.KEY_COMPROMISE,
    CrlReason.CESSATION_OF_OPERATION,
)

DEFAULT_REASON = {
    LossCause.HOLDER_REQUEST: CrlReason.UNSPECIFIED,
    LossCause.RESIDENT_CHANGE: CrlReason.AFFILIATION_CHANGED,
    LossCause.RECORD_ERROR: CrlReason.UNSPECIFIED,
    LossCause.ISSUER_KEY_COMPROMISE: CrlReason.CA_COMPROMISE,
    LossCause.CARD_CERT_LOST_EFFECT: CrlReason.CESSATION_OF_OPERATION,
}


def operator_loss(cause: LossCause, reason: CrlReason | None) -> CrlReason:
    """The reason to record for an operator's loss of `cause`; refuses other causes."""
    if cause not in OPERATOR_CAUSES:
        allowed = ", ".join(c.slug for c in OPERATOR_CAUSES)
        raise Refused(
            f"cause {cause.slug} is not recorded by an operator (allowed: {allowed}); "
            "it follows from resident events, issuer compromise or the mobile cascade"
        )
    if reason is None:
        return DEFAULT_REASON[cause]
    if reason not in OPERATOR_REASONS:
        allowed = ", ".join(r.slug for r in OPERATOR_REASONS)
        raise Refused(f"reason {reason.slug} is not allowed here (allowed: {allowed})")
    return reason
