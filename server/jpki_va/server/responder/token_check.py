"""The responder's online check of a verifier token (第38条の3).

Offline, a token proves what the agency certified when it was issued. Online, the
responder also answers whether that still holds: the verifier is still registered
as a specific auth verifier with an agreement, and (when the token is bound to a
certificate) that certificate still identifies it. Removing a verifier from the
registry therefore withdraws its tokens at the next snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from jpki_va.core.clock import Clock
from jpki_va.core.domain import Role
from jpki_va.core.verifier_token import InvalidVerifierToken, VerifierToken, verify_token
from jpki_va.server.model.verifiers import VerifierTable


@dataclass(frozen=True, slots=True)
class TokenVerdict:
    valid: bool
    reason: str
    token: VerifierToken | None


class TokenChecker:
    def __init__(
        self,
        roots: list[x509.Certificate],
        verifiers: Callable[[], VerifierTable],
        clock: Clock,
    ) -> None:
        self._roots = roots
        self._verifiers = verifiers
        self._clock = clock

    def check(self, token: str) -> TokenVerdict:
        now = self._clock.now()
        checked: VerifierToken | None = None
        reasons = []
        for root in self._roots:
            try:
                checked = verify_token(token, root, now=now)
                break
            except InvalidVerifierToken as exc:
                reasons.append(str(exc))
        if checked is None:
            return TokenVerdict(False, "; ".join(dict.fromkeys(reasons)), None)
        verifier = self._verifiers().by_id.get(checked.verifier_id)
        if verifier is None:
            return TokenVerdict(
                False, f"verifier {checked.verifier_id!r} is not registered", checked
            )
        if Role.SPECIFIC_AUTH_VERIFIER not in verifier.roles or not verifier.agreement:
            return TokenVerdict(
                False,
                f"verifier {verifier.id!r} is no longer a specific auth verifier with an agreement",
                checked,
            )
        bound = checked.cert_fingerprint
        if bound is not None and bound not in verifier.cert_fingerprints:
            return TokenVerdict(
                False, "the certificate the token is bound to no longer identifies it", checked
            )
        return TokenVerdict(True, "", checked)
