"""OCSP for verifiers: each CertID's kind checked against the entitlements, and what
was answered counted as provisions. gRPC's Ocsp and HTTP OCSP both go through it.
"""

from __future__ import annotations

from collections import Counter

from server.access import Caller, Gate
from server.domain import Provision
from server.law.entitlements import status_provision
from server.ocsp import OcspResponder
from server.ocsp_cache import OcspReply


class GatedOcsp:
    def __init__(self, ocsp: OcspResponder, gate: Gate) -> None:
        self._ocsp = ocsp
        self._gate = gate

    def respond(self, caller: Caller, der: bytes) -> OcspReply:
        """Raises NoIdentity, UnknownVerifier or NotEntitled before anything is answered."""
        verifier = self._gate.identify(caller)
        counts: Counter[Provision] = Counter()
        for kind in self._ocsp.issuer_kinds(der):
            self._gate.check(verifier, status_provision(kind))
            counts[status_provision(kind)] += 1
        reply = self._ocsp.respond(der)
        if counts and reply.successful:
            self._gate.provided(verifier, counts)
        return reply
