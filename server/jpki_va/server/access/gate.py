"""Who is calling, and may they have what they ask for: the responder's gate.

The gRPC layer only extracts a `Caller` (the SHA-256 fingerprint of the mTLS client
certificate, or in insecure-loopback demos a claimed verifier id); the gate finds
the verifier in the registry the served index carries, checks the entitlement
matrix (jpki_va.server.law.entitlements) and writes what was provided to the ledger
before the answer leaves. Every verifier-facing method uses it the same way:

    verifier = gate.admit(caller, provision)      # refuses with the missing role
    ... compute the answer ...
    gate.provided(verifier, {provision: n})       # durable before the answer leaves

or, for one provision computed by one function, `gate.provide(caller, provision, f)`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import TypeVar

from jpki_va.core.clock import Clock
from jpki_va.core.domain import Provision, Verifier
from jpki_va.server.law.entitlements import NotEntitled, check_entitled
from jpki_va.server.ledger.provisions import Disclosure, Recorder
from jpki_va.server.model.verifiers import VerifierTable

T = TypeVar("T")

__all__ = [
    "Caller",
    "Gate",
    "NoIdentity",
    "NotEntitled",
    "NotOperator",
    "Operators",
    "UnknownVerifier",
]


#: One of a provision, shared: the ledger only reads the counts it is given.
_ONE: Mapping[Provision, Mapping[Provision, int]] = {
    provision: MappingProxyType({provision: 1}) for provision in Provision
}


class NoIdentity(Exception):
    """The call carries no verifier identity at all."""


class UnknownVerifier(Exception):
    """The caller's certificate (or claimed id) is not in the verifier registry."""


@dataclass(frozen=True, slots=True)
class Caller:
    """What the transport tells about the caller; at most one field is set.

    Over TLS (gRPC or HTTP) the caller is its client certificate, by `fingerprint_of`.
    """

    fingerprint: bytes | None = None  # SHA-256 of the mTLS client certificate (DER)
    claimed_id: str | None = None  # insecure loopback only: a verifier id, unproven

    def describe(self) -> str:
        if self.fingerprint is not None:
            return f"client certificate sha256:{self.fingerprint.hex()}"
        return f"verifier id {self.claimed_id!r}"


def fingerprint_of(certificate_der: bytes) -> bytes:
    """A client certificate's identity: the SHA-256 of its DER, as the registry keeps it."""
    return hashlib.sha256(certificate_der).digest()


class NotOperator(Exception):
    """A registry operation from a caller that is not one of the signer's operators."""


class Operators:
    """The signer's operators: client certificates named in its configuration.

    `None` means plaintext on loopback (demos, tests), where whoever can reach the
    port is trusted as the operator, as the machine's own user.
    """

    def __init__(self, fingerprints: frozenset[bytes] | None) -> None:
        self._fingerprints = fingerprints

    def require(self, caller: Caller) -> None:
        if self._fingerprints is None:
            return
        if caller.fingerprint is None or caller.fingerprint not in self._fingerprints:
            raise NotOperator(f"{caller.describe()} is not an operator of this signer")


class Gate:
    """Identifies callers, checks entitlements, records what was provided."""

    def __init__(
        self,
        verifiers: Callable[[], VerifierTable],
        ledger: Recorder,
        clock: Clock,
    ) -> None:
        # Asked on every identification, and must give the registry as it is now (the
        # live index's, caught up with its deltas): a change applies to the next call.
        self._verifiers = verifiers
        self._ledger = ledger
        self._clock = clock

    def identify(self, caller: Caller) -> Verifier:
        """The registered verifier behind `caller`; any registered verifier passes."""
        table = self._verifiers()
        if caller.fingerprint is not None:
            found = table.by_fingerprint.get(caller.fingerprint)
        elif caller.claimed_id is not None:
            found = table.by_id.get(caller.claimed_id)
        else:
            raise NoIdentity("no verifier identity: present a registered client certificate (mTLS)")
        if found is None:
            raise UnknownVerifier(f"{caller.describe()} is not a registered verifier")
        return found

    def admit(self, caller: Caller, provision: Provision) -> Verifier:
        verifier = self.identify(caller)
        check_entitled(verifier, provision)
        return verifier

    #: For calls that ask for several provisions: check each with the same verifier.
    #: The law's own check, called with no frame of the gate's (unary Check asks it on
    #: every call).
    check = staticmethod(check_entitled)

    def provided(
        self,
        verifier: Verifier,
        counts: Mapping[Provision, int],
        disclosures: Sequence[Disclosure] = (),
    ) -> None:
        """Record provisions (and disclosures) durably; call before the answer leaves."""
        if any(counts.values()) or disclosures:
            self._ledger.record(verifier.id, counts, self._clock.now(), disclosures)

    def provided_one(
        self, verifier: Verifier, provision: Provision, when: datetime | None = None
    ) -> None:
        """`provided(verifier, {provision: 1})`, the one-answer call, without a Counter;
        `when`, the clock's reading the call already made (default: now)."""
        self._ledger.record_one(verifier.id, provision, self._clock.now() if when is None else when)

    def provide(
        self,
        caller: Caller,
        provision: Provision,
        produce: Callable[[Verifier], T],
        disclose: Callable[[Verifier, T], Sequence[Disclosure]] | None = None,
    ) -> T:
        """Admit, produce the answer, record it (and its disclosures), return it."""
        verifier = self.admit(caller, provision)
        answer = produce(verifier)
        disclosures = () if disclose is None else disclose(verifier, answer)
        if disclosures:
            self.provided(verifier, _ONE[provision], disclosures)
        else:
            self.provided_one(verifier, provision)
        return answer

    def now_disclosure(
        self, verifier: Verifier, provision: Provision, subject: str, detail: str = ""
    ) -> Disclosure:
        return Disclosure(self._clock.now(), verifier.id, provision, subject, detail)
