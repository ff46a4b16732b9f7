"""Who gets what over HTTP: the verifier gate applied to HTTP OCSP and CRLs.

Plaintext HTTP listens on loopback only, behind a proxy that authenticates
verifiers (mTLS) and names the verifier in the X-JPKI-Verifier header, the way
plaintext gRPC on loopback takes the x-jpki-verifier metadata; a request without it
is the configured loopback verifier's, if any. Over TLS (`tls=True`) the server
names the caller by its client certificate's fingerprint instead, the identity
gRPC's mTLS gives (`Caller(fingerprint=...)`), and no header counts. Entitlements
and provision counts are the same as over gRPC: OCSP answers `unauthorized` to a
caller who may not have them, a CRL (full or delta) is 401/403; a CRL answered 304
Not Modified provides nothing and is not counted. CA certificates and the root's ARL
carry nothing personal and are anyone's. What was provided is tallied and committed
to the ledger once per turn of the event loop, before the responses of that turn
leave (`commit`); the OCSP cache reads the index's generation once per turn too
(`begin_turn`), not once per request. A refused OCSP request is logged through the process's
`RefusalLog`: the caller's header cut short, and not once per request.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping

from jpki_va.core.domain import CertKind, Provision, Verifier
from jpki_va.server.access.gate import Caller, Gate, NoIdentity, UnknownVerifier
from jpki_va.server.base.refusal_log import RefusalLog
from jpki_va.server.http.app import Forbidden, PublishedFile
from jpki_va.server.law.entitlements import NotEntitled, crl_provision
from jpki_va.server.pki.ocsp_wire import ResponseStatus, unsuccessful
from jpki_va.server.responder.ca_files import CaFiles, ServedFile
from jpki_va.server.responder.crls import CrlFiles
from jpki_va.server.responder.ocsp import OcspResponder
from jpki_va.server.responder.ocsp_access import GatedOcsp
from jpki_va.server.responder.ocsp_cache import OcspReply, ResponseCache
from jpki_va.server.responder.status import NotReady

log = logging.getLogger(__name__)

_UNAUTHORIZED = OcspReply(unsuccessful(ResponseStatus.UNAUTHORIZED))
#: How the TLS server hands over a client certificate's fingerprint (hex) in place of
#: the header; only a TLS HttpAccess reads it so, and over TLS the header is dropped.
TLS_PEER_PREFIX = b"tls-sha256:"
_PEER = TLS_PEER_PREFIX.decode()


class HttpAccess:
    """Used from the HTTP event loop thread only."""

    def __init__(
        self,
        ocsp: OcspResponder,
        files: CrlFiles,
        ca: CaFiles,
        gate: Gate,
        default_verifier: str | None,
        refusals: RefusalLog | None = None,
        *,
        tls: bool = False,
        cache: ResponseCache | None = None,
    ) -> None:
        self._ocsp = GatedOcsp(ocsp, gate, self._tally)
        self._tls = tls
        self._refusals = refusals or RefusalLog(log)
        self._files = files
        self._ca = ca
        self._gate = gate
        self._default = default_verifier
        self._pending: dict[str, tuple[Verifier, dict[Provision, int]]] = {}
        self._cache = cache  # the OCSP responder's: its index generation read once a turn

    def _tally(self, verifier: Verifier, counts: Mapping[Provision, int]) -> None:
        held = self._pending.get(verifier.id)
        if held is None:
            held = self._pending[verifier.id] = (verifier, {})
        tally = held[1]
        for provision, n in counts.items():  # not Counter.update: its isinstance per call
            tally[provision] = tally.get(provision, 0) + n

    def begin_turn(self) -> None:
        if self._cache is not None:
            # No index yet: nothing is held, and each request says tryLater as before.
            with contextlib.suppress(NotReady):
                self._cache.hold_generation()

    def commit(self) -> bool:
        if self._cache is not None:
            self._cache.release_generation()
        pending, self._pending = self._pending, {}
        for verifier, counts in pending.values():
            self._gate.provided(verifier, counts)  # raises LedgerError: nothing leaves
        return True

    def announcement(self) -> bytes | None:
        return self._files.announcement()  # public (公表): no gate, nothing to count

    def _caller(self, claimed: str | None) -> Caller:
        if self._tls:
            if claimed is None or not claimed.startswith(_PEER):
                return Caller()
            return Caller(fingerprint=bytes.fromhex(claimed.removeprefix(_PEER)))
        claimed = claimed or self._default
        return Caller() if claimed is None else Caller(claimed_id=claimed)

    def respond(self, claimed: str | None, der: bytes) -> OcspReply:
        try:
            return self._ocsp.respond(self._caller(claimed), der)
        except (NoIdentity, UnknownVerifier, NotEntitled) as exc:
            # The reason is the class (a constant); the message carries the caller's id.
            self._refusals.refused(f"HTTP OCSP refused ({type(exc).__name__})", str(exc))
            return _UNAUTHORIZED

    def _admitted(self, claimed: str | None, kind: CertKind) -> Verifier:
        try:
            return self._gate.admit(self._caller(claimed), crl_provision(kind))
        except NoIdentity as exc:
            raise Forbidden(401, str(exc)) from None
        except (UnknownVerifier, NotEntitled) as exc:
            raise Forbidden(403, str(exc)) from None

    def crl(
        self, claimed: str | None, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> PublishedFile | None:
        verifier = self._admitted(claimed, kind)
        found = self._files.current_at_url(kind, key_id_prefix, partition)
        if found is None:
            return None
        info = found[0].info
        return PublishedFile(
            found[1],
            info.sha256.hex()[:32],
            info.this_update.timestamp(),
            info.next_update.timestamp(),
            lambda: self._tally(verifier, {crl_provision(kind): 1}),  # not for a 304
        )

    def delta_crl(
        self, claimed: str | None, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> PublishedFile | None:
        """Provided as the full CRL is: the same entitlement, counted the same."""
        verifier = self._admitted(claimed, kind)
        found = self._files.delta_at_url(kind, key_id_prefix, partition)
        if found is None:
            return None
        return _published(found, lambda: self._tally(verifier, {crl_provision(kind): 1}))

    def ca_certificate(self, kind: CertKind | None, key_id_prefix: bytes) -> PublishedFile | None:
        found = self._ca.certificate(kind, key_id_prefix)
        return None if found is None else _published(found)

    def arl(self, key_id_prefix: bytes) -> PublishedFile | None:
        found = self._ca.arl(key_id_prefix)
        return None if found is None else _published(found)


def _published(found: ServedFile, sent: Callable[[], None] = lambda: None) -> PublishedFile:
    return PublishedFile(
        found.der,
        hashlib.sha256(found.der).hexdigest()[:32],
        found.this_update.timestamp(),
        found.next_update.timestamp(),
        sent,
    )
