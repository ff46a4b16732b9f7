"""RFC 6960 OCSP: a DER request in, a DER response out, signed by the delegated key.

Protocol code only: no I/O of its own. Status comes from a StatusSource, the
delegated OCSP-signer key and its certificates from a callable the composition
root wires to wherever they are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from server.clock import Clock
from server.domain import CertKind, Status
from server.status import BadRequest, NotReady, Resolver, StatusSource

log = logging.getLogger(__name__)

#: A signer certificate with less life left than this is "about to expire": not used.
MIN_SIGNER_REMAINING = timedelta(minutes=1)


class _Unsuccessful(Exception):
    def __init__(self, status: ocsp.OCSPResponseStatus) -> None:
        self.status = status


@dataclass(frozen=True)
class DelegatedSigner:
    """The responder's OCSP key and, per issuer generation, the certificate for it."""

    key: CertificateIssuerPrivateKeyTypes
    certificates: dict[bytes, x509.Certificate]  # issuer key id -> delegated cert


def _error(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(Encoding.DER)


class OcspResponder:
    def __init__(
        self,
        source: StatusSource,
        resolver: Resolver,
        signer: Callable[[], DelegatedSigner | None],
        clock: Clock,
    ) -> None:
        self._source = source
        self._resolver = resolver
        self._signer = signer
        self._clock = clock

    def issuer_kinds(self, der: bytes) -> list[CertKind]:
        """The kinds of the certificates a request asks about, by their CertIDs' issuers.

        Empty for a malformed request or foreign issuers: `respond` answers those
        with an error status and no status information.
        """
        try:
            request = ocsp.load_der_ocsp_request(der)
            issuer = self._resolver.issuer_by_hash(
                request.hash_algorithm.name, request.issuer_name_hash, request.issuer_key_hash
            )
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
            return []
        return [] if issuer is None else [issuer.kind]

    def respond(self, der: bytes) -> bytes:
        try:
            return self._respond(der)
        except _Unsuccessful as exc:
            return _error(exc.status)

    def _respond(self, der: bytes) -> bytes:
        try:
            request = ocsp.load_der_ocsp_request(der)
            algorithm = request.hash_algorithm.name
            name_hash, key_hash = request.issuer_name_hash, request.issuer_key_hash
            serial = request.serial_number
            nonce = _nonce(request)
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
            log.info("malformed OCSP request: %s", exc)
            raise _Unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST) from None
        try:
            issuer = self._resolver.issuer_by_hash(algorithm, name_hash, key_hash)
            if issuer is None:
                raise _Unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
            now = self._clock.now()
            answer = self._source.status(issuer.kind, serial, now)
        except BadRequest:
            raise _Unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST) from None
        except NotReady:
            raise _Unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER) from None
        signer = self._signer()
        delegated = None if signer is None else signer.certificates.get(issuer.key_id)
        if (
            signer is None
            or delegated is None
            or delegated.not_valid_before_utc > now
            or delegated.not_valid_after_utc - now < MIN_SIGNER_REMAINING
        ):
            # tryLater rather than a response whose signer certificate is expired, not
            # yet valid or about to expire: a verifier would reject it anyway.
            log.warning("no valid delegated OCSP-signer certificate for %s", issuer.key_id.hex())
            raise _Unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
        next_update = answer.next_update
        if delegated.not_valid_after_utc < next_update:
            # A response is never valid longer than the certificate that vouches for it.
            # Renewal (ResponderConfig.ocsp_renew_at) runs early so this does not happen.
            log.warning("delegated OCSP-signer certificate expires before nextUpdate; clamped")
            next_update = delegated.not_valid_after_utc
        revocation_time: datetime | None = None
        revocation_reason: x509.ReasonFlags | None = None
        if answer.status is Status.GOOD:
            cert_status = ocsp.OCSPCertStatus.GOOD
        elif answer.status is Status.REVOKED:
            assert answer.record is not None and answer.record.loss is not None
            cert_status = ocsp.OCSPCertStatus.REVOKED
            revocation_time = answer.record.loss.time
            revocation_reason = answer.record.loss.reason.to_x509()
        else:
            # Never issued, expired or not yet valid: OCSP has no word but "unknown",
            # and an expired certificate has lost effect, so it is never "good".
            cert_status = ocsp.OCSPCertStatus.UNKNOWN
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=name_hash,
                issuer_key_hash=key_hash,
                serial_number=serial,
                algorithm=request.hash_algorithm,
                cert_status=cert_status,
                this_update=answer.this_update,
                next_update=next_update,
                revocation_time=revocation_time,
                revocation_reason=revocation_reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, delegated)
            .certificates([delegated])
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), False)
        return builder.sign(signer.key, hashes.SHA256()).public_bytes(Encoding.DER)


def is_successful(der: bytes) -> bool:
    """Whether a DER OCSPResponse we built carries status information."""
    return ocsp.load_der_ocsp_response(der).response_status is ocsp.OCSPResponseStatus.SUCCESSFUL


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        ext = request.extensions.get_extension_for_class(x509.OCSPNonce)
    except x509.ExtensionNotFound:
        return None
    nonce = ext.value.nonce
    # RFC 9654: a nonce is 1 to 32 octets; responders accept up to 128 for old clients.
    if not 1 <= len(nonce) <= 128:
        raise ValueError("OCSP nonce must be 1 to 128 octets")
    return nonce
