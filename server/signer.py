"""The signer's domain service: every registry change and the signature it needs.

A registry change and the signature that depends on it both happen or neither:
certificates are signed before the write transaction that records them and are
discarded if it fails; a failed signature leaves the registry untouched.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from server import profiles
from server.authority import Authority
from server.clock import Clock
from server.domain import CertKind, CrlReason, Loss, LossCause
from server.law.errors import Refused
from server.law.loss_recording import operator_loss
from server.law.mobile_cascade import cascade_card_loss
from server.law.mobile_issuance import check_mobile_application
from server.lint import LintError, lint_certificate
from server.profiles import CertProfile, Holder, ProfileSettings
from server.publisher import PublishedSnapshot, Publisher
from server.registry import (
    AlreadyLost,
    CertificateRecord,
    DuplicateSerial,
    IssuerRecord,
    LossEvent,
    NotIssued,
    Registry,
    RegistryTxn,
)
from server.signing_queue import SigningQueue

log = logging.getLogger(__name__)

_RESIDENT_CODE = re.compile(r"\d{11}")
_MUNICIPALITY = re.compile(r"\d{6}")


class SignerError(Exception):
    """Base of the signer's refusals; each subclass maps to one gRPC status."""


class InvalidRequest(SignerError):
    pass


class NotFound(SignerError):
    pass


class Conflict(SignerError):
    pass


class PreconditionFailed(SignerError):
    pass


@dataclass(frozen=True)
class IssueRequest:
    kind: CertKind
    resident_code: str
    municipality_code: str
    holder: Holder
    public_key_der: bytes
    card_serial: int | None = None
    application_signature: bytes = b""

    def validate(self) -> None:
        if not _RESIDENT_CODE.fullmatch(self.resident_code):
            raise InvalidRequest("resident code must be 11 digits")
        if not _MUNICIPALITY.fullmatch(self.municipality_code):
            raise InvalidRequest("municipality code must be 6 digits")
        for name in ("name", "address", "birth_date", "sex"):
            if not getattr(self.holder, name).strip():
                raise InvalidRequest(f"holder {name} is empty")
        try:
            date.fromisoformat(self.holder.birth_date)
        except ValueError:
            raise InvalidRequest("birth date must be YYYY-MM-DD") from None


def load_holder_key(der: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"public key is not a DER SubjectPublicKeyInfo: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InvalidRequest("public key must be RSA of at least 2048 bits or EC P-256")


class Signer:
    def __init__(
        self,
        registry: Registry,
        authority: Authority,
        publisher: Publisher,
        clock: Clock,
        settings: ProfileSettings,
        queue: SigningQueue | None = None,
    ) -> None:
        self._registry = registry
        self._authority = authority
        self._publisher = publisher
        self._clock = clock
        self._settings = settings
        # Unbounded waiting when none is given (tools, tests of the domain alone).
        self._queue = queue or SigningQueue(1 << 30, 3600.0)

    # issuance -----------------------------------------------------------------------
    def issue(self, request: IssueRequest) -> tuple[CertificateRecord, x509.Certificate]:
        request.validate()
        public_key = load_holder_key(request.public_key_der)
        now = self._clock.now()
        not_after = now + self._settings.validity[request.kind]
        if request.kind.is_mobile:
            with self._registry.read() as tx:
                card = self._check_mobile(tx, request, now)
            # A mobile certificate does not outlive the card certificate it rests on.
            not_after = min(not_after, card.not_after)
        issuer = self._authority.active_issuer(request.kind)
        issuer_cert = issuer.certificate
        for _ in range(5):
            serial = secrets.randbits(63) | 1 << 62  # 8 octets, positive, never short
            # Signed before the write that records it: a refused or failed signature
            # leaves the registry as it was, and a failed write discards the signature.
            with self._queue.slot():
                cert = profiles.end_entity_certificate(
                    self._settings,
                    self._authority.key(issuer),
                    issuer_cert,
                    kind=request.kind,
                    public_key=public_key,
                    serial=serial,
                    holder=request.holder,
                    partition=request.municipality_code,
                    not_before=now - self._settings.backdate,
                    not_after=not_after,
                )
            record = CertificateRecord(
                kind=request.kind,
                serial=serial,
                issuer_key_id=issuer.key_id,
                resident_code=request.resident_code,
                partition=request.municipality_code,
                holder=request.holder,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                certificate_der=cert.public_bytes(Encoding.DER),
            )
            try:
                with self._registry.write() as tx:
                    if request.kind.is_mobile:
                        # Again inside the write: the card may have lost effect meanwhile.
                        self._check_mobile(tx, request, now)
                    tx.add_certificate(record)
            except DuplicateSerial:
                continue
            log.info("issued %s serial %X", request.kind.name, serial)
            return record, issuer_cert
        raise SignerError("could not allocate a unique serial")

    def _check_mobile(
        self, tx: RegistryTxn, request: IssueRequest, now: datetime
    ) -> CertificateRecord:
        try:
            return check_mobile_application(
                tx,
                kind=request.kind,
                resident_code=request.resident_code,
                card_serial=request.card_serial,
                application_signature=request.application_signature,
                public_key_der=request.public_key_der,
                now=now,
            )
        except Refused as exc:
            raise PreconditionFailed(str(exc)) from None

    # loss of effect -----------------------------------------------------------------
    def record_loss(
        self, kind: CertKind, serial: int, cause: LossCause, reason: CrlReason | None
    ) -> list[LossEvent]:
        """Record an operator's loss and its cascade, all in one transaction."""
        try:
            reason = operator_loss(cause, reason)
        except Refused as exc:
            raise InvalidRequest(str(exc)) from None
        loss = Loss(time=self._clock.now(), cause=cause, reason=reason)
        try:
            with self._registry.write() as tx:
                event = tx.record_loss(kind, serial, loss)
                record = tx.certificate(kind, serial)
                assert record is not None
                events = [event, *cascade_card_loss(tx, record, loss)]
        except NotIssued as exc:
            raise NotFound(str(exc)) from None
        except AlreadyLost as exc:
            raise Conflict(str(exc)) from None
        for e in events:
            log.info("%s serial %X lost effect: %s", e.kind.name, e.serial, e.loss.cause.name)
        return events

    # snapshots ------------------------------------------------------------------------
    def publish(self, *, full: bool = True) -> PublishedSnapshot:
        # Delta snapshots come with partitioned delta CRLs; until then every publish is full.
        del full
        return self._publisher.publish_full()

    def publish_if_changed(self) -> PublishedSnapshot | None:
        return self._publisher.publish_if_changed()

    # the responder's delegated OCSP signer --------------------------------------------
    def ocsp_signer_certificates(
        self, csr_der: bytes, key_ids: list[bytes]
    ) -> list[tuple[IssuerRecord, x509.Certificate]]:
        with self._queue.slot():
            return certify_ocsp_signer(
                self._authority,
                csr_der,
                key_ids,
                now=self._clock.now(),
                backdate=self._settings.backdate,
                validity=self._settings.ocsp_signer_validity,
            )

    def issuers(self) -> tuple[IssuerRecord, list[IssuerRecord]]:
        return self._authority.root(), self._authority.issuers()


def certify_ocsp_signer(
    authority: Authority,
    csr_der: bytes,
    key_ids: list[bytes],
    *,
    now: datetime,
    backdate: timedelta,
    validity: timedelta,
) -> list[tuple[IssuerRecord, x509.Certificate]]:
    """Delegated OCSP-signer certificates for the CSR's key, one per issuer generation.

    ``key_ids`` selects the generations; empty means every generation whose CA
    certificate has not expired. Each certificate is linted before it is returned.
    """
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError as exc:
        raise InvalidRequest(f"CSR is not DER PKCS#10: {exc}") from None
    if not csr.is_signature_valid:
        raise InvalidRequest("CSR signature does not verify")
    public_key = csr.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidRequest("OCSP signer key must be RSA or EC")
    if validity <= timedelta(0):
        raise InvalidRequest("OCSP signer validity must be positive")
    issuers = authority.issuers()
    if key_ids:
        wanted = set(key_ids)
        unknown = wanted - {r.key_id for r in issuers}
        if unknown:
            raise NotFound(f"unknown issuer key id {sorted(unknown)[0].hex()}")
        issuers = [r for r in issuers if r.key_id in wanted]
    else:
        issuers = [r for r in issuers if r.certificate.not_valid_after_utc > now]
    out = []
    for issuer in issuers:
        key = authority.key(issuer)
        cert = profiles.ocsp_signer_certificate(
            key, issuer.certificate, public_key, csr.subject, now - backdate, now + validity
        )
        try:
            lint_certificate(
                cert,
                profile=CertProfile.OCSP_SIGNER,
                subject_public_key=public_key,
                issuer_public_key=key.public_key(),
                issuer=issuer.certificate,
            )
        except LintError as exc:
            raise SignerError(str(exc)) from None
        out.append((issuer, cert))
    return out
