"""When a verifier token may be given (第38条の3).

The token is given only at the request of a 特定利用者証明検証者 (1項・2項), and only
under the agreement (取決め, 3項) the agency and that verifier concluded beforehand
(あらかじめ): the registry records its reference, terms and effective period (from its
date to its last day, Japan time), and a request outside that period is refused.
"""

from __future__ import annotations

from datetime import date

from jpki_va.core.domain import Provision, Verifier
from jpki_va.server.law.entitlements import check_entitled
from jpki_va.server.law.errors import Refused


def check_token_request(verifier: Verifier, today: date) -> None:
    """Raise NotEntitled without the role, Refused without an agreement in effect today."""
    check_entitled(verifier, Provision.VERIFIER_TOKEN)
    if not verifier.agreement:
        raise Refused(
            f"verifier {verifier.id!r} has no agreement (取決め) on record: "
            "第38条の3第3項 requires one before a verifier token is given"
        )
    if verifier.agreement_date is not None and today < date.fromisoformat(verifier.agreement_date):
        raise Refused(
            f"verifier {verifier.id!r}'s agreement {verifier.agreement} takes effect on "
            f"{verifier.agreement_date}: no verifier token before it (第38条の3第3項)"
        )
    if verifier.agreement_until is not None and today > date.fromisoformat(
        verifier.agreement_until
    ):
        raise Refused(
            f"verifier {verifier.id!r}'s agreement {verifier.agreement} ended on "
            f"{verifier.agreement_until}: no verifier token after it (第38条の3第3項)"
        )
