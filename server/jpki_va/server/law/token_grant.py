"""When a verifier token may be given (第38条の3).

The token is given only at the request of a 特定利用者証明検証者 (1項・2項), and only
after the agency and that verifier concluded an agreement (取決め, 3項); the
registry records the agreement's reference on the verifier.
"""

from __future__ import annotations

from jpki_va.core.domain import Provision, Verifier
from jpki_va.server.law.entitlements import check_entitled
from jpki_va.server.law.errors import Refused


def check_token_request(verifier: Verifier) -> None:
    """Raise NotEntitled without the role, Refused without the prior agreement."""
    check_entitled(verifier, Provision.VERIFIER_TOKEN)
    if not verifier.agreement:
        raise Refused(
            f"verifier {verifier.id!r} has no agreement (取決め) on record: "
            "第38条の3第3項 requires one before a verifier token is given"
        )
