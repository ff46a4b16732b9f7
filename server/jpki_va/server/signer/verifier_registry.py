"""The verifier registry on the signer: who the verifiers are, and their tokens.

Operators add and remove verifiers; the registry carries them to the responders in
every snapshot. A specific auth verifier asks here for its verifier token
(第38条の3), signed with the HSM's verifier-token key; each token given is counted
in the signer's ledger for the annual report (第41条).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from jpki_va.core.clock import Clock
from jpki_va.core.domain import Provision, Role, Verifier
from jpki_va.core.verifier_token import issue_token
from jpki_va.server.access.gate import Caller
from jpki_va.server.law.errors import Refused
from jpki_va.server.law.token_grant import check_token_request
from jpki_va.server.ledger.provisions import Ledger, local_day
from jpki_va.server.registry.transactions import DuplicateVerifierCertificate, Registry
from jpki_va.server.signer.authority import Authority
from jpki_va.server.signer.service import Conflict, InvalidRequest, NotFound, PreconditionFailed

log = logging.getLogger(__name__)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FINGERPRINT = 32


class NotAVerifier(Exception):
    """The caller of a verifier-only method is not a registered verifier."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    verifier: Verifier
    not_after: datetime


class VerifierRegistry:
    def __init__(
        self,
        registry: Registry,
        authority: Authority,
        ledger: Ledger,
        clock: Clock,
        token_validity: timedelta = timedelta(days=30),
    ) -> None:
        self._registry = registry
        self._authority = authority
        self._ledger = ledger
        self._clock = clock
        self._token_validity = token_validity

    def add(self, verifier: Verifier, *, replace: bool = False) -> Verifier:
        _validate(verifier)
        with self._registry.write() as tx:
            if tx.verifier(verifier.id) is not None and not replace:
                raise Conflict(f"verifier {verifier.id!r} exists (replace it explicitly)")
            try:
                tx.put_verifier(verifier)
            except DuplicateVerifierCertificate as exc:
                raise Conflict(str(exc)) from None
        log.info("verifier %s: roles %s", verifier.id, sorted(r.name for r in verifier.roles))
        return verifier

    def remove(self, verifier_id: str) -> None:
        with self._registry.write() as tx:
            if not tx.remove_verifier(verifier_id):
                raise NotFound(f"no verifier {verifier_id!r}")
        log.info("verifier %s removed", verifier_id)

    def list(self) -> list[Verifier]:
        with self._registry.read() as tx:
            return tx.verifiers()

    def _find(self, caller: Caller) -> Verifier:
        with self._registry.read() as tx:
            verifiers = tx.verifiers()
        for verifier in verifiers:
            if caller.fingerprint is not None and caller.fingerprint in verifier.cert_fingerprints:
                return verifier
            if caller.fingerprint is None and caller.claimed_id == verifier.id:
                return verifier
        if caller.fingerprint is None and caller.claimed_id is None:
            raise NotAVerifier("no verifier identity: present a registered client certificate")
        raise NotAVerifier(f"{caller.describe()} is not a registered verifier")

    def issue_token(self, caller: Caller) -> IssuedToken:
        """A token for the calling verifier, given only at its own request (第38条の3)."""
        verifier = self._find(caller)
        try:
            check_token_request(verifier, local_day(self._clock.now()))
        except Refused as exc:
            raise PreconditionFailed(str(exc)) from None
        key, cert = self._authority.verifier_token_signer()
        now = self._clock.now()
        token, not_after = issue_token(
            key,
            cert,
            verifier,
            now=now,
            validity=self._token_validity,
            cert_fingerprint=caller.fingerprint,
        )
        # Counted before the token leaves: the signer's share of the 第41条 report.
        self._ledger.record(verifier.id, Counter({Provision.VERIFIER_TOKEN: 1}), now)
        self._ledger.sync()
        log.info("verifier token issued to %s", verifier.id)
        return IssuedToken(token, verifier, not_after)


def _validate(verifier: Verifier) -> None:
    if not _ID.fullmatch(verifier.id):
        raise InvalidRequest(
            "verifier id must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if not verifier.roles:
        raise InvalidRequest("a verifier needs at least one role")
    if not verifier.cert_fingerprints:
        raise InvalidRequest("a verifier needs at least one client certificate")
    for fingerprint in verifier.cert_fingerprints:
        if len(fingerprint) != _FINGERPRINT:
            raise InvalidRequest("certificate fingerprints are SHA-256 (32 octets)")
    if Role.SPECIFIC_AUTH_VERIFIER not in verifier.roles and verifier.agreement:
        raise InvalidRequest("an agreement (取決め) is recorded only for a specific auth verifier")
    if not verifier.agreement and (
        verifier.agreement_date or verifier.agreement_terms or verifier.agreement_until
    ):
        raise InvalidRequest("an agreement's date, terms or period need the agreement reference")
    first = last = None
    try:
        if verifier.agreement_date is not None:
            first = date.fromisoformat(verifier.agreement_date)
        if verifier.agreement_until is not None:
            last = date.fromisoformat(verifier.agreement_until)
    except ValueError:
        raise InvalidRequest("agreement dates must be YYYY-MM-DD") from None
    if first is not None and last is not None and last < first:
        raise InvalidRequest("the agreement ends before it begins")
