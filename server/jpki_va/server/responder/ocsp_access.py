"""OCSP for verifiers: each CertID's kind checked against the entitlements, and what
was answered counted as provisions. gRPC's Ocsp and HTTP OCSP both go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from jpki_va.core.domain import Provision, Verifier
from jpki_va.server.access.gate import Caller, Gate
from jpki_va.server.law.entitlements import status_provision
from jpki_va.server.responder.ocsp import OcspResponder, malformed
from jpki_va.server.responder.ocsp_cache import OcspReply


class GatedOcsp:
    def __init__(
        self,
        ocsp: OcspResponder,
        gate: Gate,
        provided: Callable[[Verifier, Mapping[Provision, int]], None] | None = None,
    ) -> None:
        self._ocsp = ocsp
        self._gate = gate
        # Where what was answered is recorded: a batch of the gate's ledger (HTTP's),
        # or None: the gate's ledger itself.
        self._provided = provided

    def respond(self, caller: Caller, der: bytes) -> OcspReply:
        """Raises NoIdentity, UnknownVerifier or NotEntitled before anything is answered."""
        verifier = self._gate.identify(caller)
        # A repeated request: its kept answer, found by its bytes, unparsed.
        kept = self._ocsp.cached(der)
        request = None
        if kept is not None:
            issuers = kept.issuers
        else:
            request = self._ocsp.read(der)
            if request is None:
                return malformed()  # no status information was given
            issuers = self._ocsp.issuers(request)  # resolved once: `answer` reuses them
        counts: dict[Provision, int] = {}  # a plain dict: one per request, on the hot path
        for issuer in issuers:
            provision = status_provision(issuer.kind)
            self._gate.check(verifier, provision)
            counts[provision] = counts.get(provision, 0) + 1
        if kept is not None:
            reply = self._ocsp.reuse(kept)
        else:
            assert request is not None
            reply = self._ocsp.answer(request, issuers, der)
        if counts and reply.successful:
            if self._provided is not None:
                self._provided(verifier, counts)
            elif len(issuers) == 1:  # the usual request: the gate's one-answer call
                self._gate.provided_one(verifier, provision)
            else:
                self._gate.provided(verifier, counts)
        return reply
