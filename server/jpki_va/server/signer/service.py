"""The signer's domain service: every registry change and the signature it needs.

A registry change and the signature that depends on it both happen or neither:
certificates are signed before the write transaction that records them and are
discarded if it fails; a failed signature leaves the registry untouched.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va import hsm
from jpki_va.core.clock import JST, Clock
from jpki_va.core.domain import CertKind, CrlReason, Loss, LossCause
from jpki_va.server.law.consent_scope import scope_at_grant
from jpki_va.server.law.errors import Refused
from jpki_va.server.law.holder_notice import record_notice
from jpki_va.server.law.issuer_compromise import Compromise, CompromiseNature
from jpki_va.server.law.key_pair import check_new_key
from jpki_va.server.law.loss_recording import (
    DEFAULT_REASON,
    HolderRequest,
    holder_request_of,
    operator_loss,
)
from jpki_va.server.law.mobile_cascade import cascade_card_loss
from jpki_va.server.law.mobile_issuance import (
    APPLICATION_VALIDITY,
    BadNotice,
    MobileBasis,
    check_basis,
    check_notice,
    check_proof_of_possession,
    notice_digest,
)
from jpki_va.server.law.renewal import supersede_previous
from jpki_va.server.law.resident_change import (
    ResidentEvent,
    ResidentEventFacts,
    kinds_ended,
    move_out_lapsed,
)
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.public_key import public_key_hash
from jpki_va.server.model.registry_values import (
    CertificateRecord,
    Consent,
    HolderNotice,
    IssuerRecord,
    LossEvent,
    MobileApplication,
    MoveOut,
)
from jpki_va.server.pki import cert_profile
from jpki_va.server.pki.cert_profile import CertProfile, ProfileSettings
from jpki_va.server.pki.cms import detached_signature
from jpki_va.server.pki.lint import LintError, lint_certificate
from jpki_va.server.registry.transactions import (
    AlreadyCompromised,
    AlreadyLost,
    DuplicateSerial,
    NotIssued,
    Registry,
    RegistryTxn,
)
from jpki_va.server.signer.authority import Authority, AuthorityError
from jpki_va.server.signer.publish_status import PublishState, PublishStatus
from jpki_va.server.signer.publisher import PublishedSnapshot, Publisher
from jpki_va.server.signer.purge import Purged, purge
from jpki_va.server.signer.signing_queue import SigningQueue

log = logging.getLogger(__name__)

_P = TypeVar("_P", PublishedSnapshot, PublishedSnapshot | None)
MAX_REPORT = 2 << 20  # a report of every verifier's counts is far smaller
_RESIDENT_CODE = re.compile(r"\d{11}")
_MUNICIPALITY = re.compile(r"\d{6}")
_VERIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as verifier_registry's ids


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

    def validate(self) -> None:
        if self.kind.is_mobile:
            raise InvalidRequest(
                f"{self.kind.name} is issued by the two-step mobile application "
                "(第16条の2, 第35条の2): BeginMobileApplication, then CompleteMobileApplication"
            )
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


def check_resident_code(code: str) -> None:
    if not _RESIDENT_CODE.fullmatch(code):
        raise InvalidRequest("resident code must be 11 digits")


def check_verifier(verifier: str) -> None:
    if not _VERIFIER.fullmatch(verifier):
        raise InvalidRequest(
            "verifier id must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


@dataclass(frozen=True)
class Issued:
    record: CertificateRecord
    issuer_certificate: x509.Certificate
    superseded: list[LossEvent]  # renewal: the earlier certificates it ended, and cascades


@dataclass(frozen=True)
class CompromiseResult:
    compromise: Compromise
    issuer: IssuerRecord
    certificates: int  # how many issued certificates that generation signed


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
        publish_status: PublishStatus | None = None,
    ) -> None:
        self._registry = registry
        self._authority = authority
        self._publisher = publisher
        self._clock = clock
        self._settings = settings
        # Unbounded waiting when none is given (tools, tests of the domain alone).
        self._queue = queue or SigningQueue(1 << 30, 3600.0)
        self._publish_status = publish_status or PublishStatus(clock, publisher.last_published_at())

    # issuance -----------------------------------------------------------------------
    def issue(self, request: IssueRequest) -> Issued:
        """A card certificate (第3条, 第22条), applied for at the municipality."""
        request.validate()
        public_key = load_holder_key(request.public_key_der)
        now = self._clock.now()
        return self._issue(
            request.kind,
            request.resident_code,
            request.municipality_code,
            request.holder,
            public_key,
            now,
            now + self._settings.validity[request.kind],
        )

    def _issue(
        self,
        kind: CertKind,
        resident_code: str,
        partition: str,
        holder: Holder,
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
        now: datetime,
        not_after: datetime,
        *,
        card_serial: int | None = None,
        in_write: Callable[[RegistryTxn, CertificateRecord], None] | None = None,
    ) -> Issued:
        """Sign and record; `in_write` checks again and records more in the same write."""
        key_hash = public_key_hash(public_key)
        issuer = self._authority.active_issuer(kind)
        with self._registry.read() as tx:
            # Before the HSM signs anything; again in the write, for a racing issuance.
            self._check_new_key(tx, key_hash, resident_code)
            if issuer.key_id in tx.compromises():
                raise PreconditionFailed(
                    f"the active {kind.name} issuing CA generation "
                    f"{issuer.key_id.hex()} is compromised: rotate to a new generation first"
                )
        issuer_cert = issuer.certificate
        for _ in range(5):
            serial = secrets.randbits(63) | 1 << 62  # 8 octets, positive, never short
            # Signed before the write that records it: a refused or failed signature
            # leaves the registry as it was, and a failed write discards the signature.
            with self._queue.slot():
                cert = cert_profile.end_entity_certificate(
                    self._settings,
                    self._authority.key(issuer),
                    issuer_cert,
                    kind=kind,
                    public_key=public_key,
                    serial=serial,
                    holder=holder,
                    partition=partition,
                    not_before=now - self._settings.backdate,
                    not_after=not_after,
                )
            record = CertificateRecord(
                kind=kind,
                serial=serial,
                issuer_key_id=issuer.key_id,
                resident_code=resident_code,
                partition=partition,
                holder=holder,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                certificate_der=cert.public_bytes(Encoding.DER),
                card_serial=card_serial,
            )
            try:
                with self._registry.write() as tx:
                    if in_write is not None:
                        in_write(tx, record)
                    self._check_new_key(tx, key_hash, resident_code)
                    tx.add_certificate(record)
                    superseded = supersede_previous(tx, record, now)
            except DuplicateSerial:
                continue
            log.info("issued %s serial %X", kind.name, serial)
            self._log_losses(superseded)
            return Issued(record, issuer_cert, superseded)
        raise SignerError("could not allocate a unique serial")

    @staticmethod
    def _check_new_key(tx: RegistryTxn, key_hash: bytes, resident_code: str) -> None:
        try:
            check_new_key(tx, key_hash, resident_code)
        except Refused as exc:
            raise Conflict(str(exc)) from None

    # the mobile application (第16条の2, 第35条の2) -------------------------------------------
    def begin_mobile_application(
        self, kind: CertKind, notice: bytes, signature: bytes, card_certificate_der: bytes
    ) -> MobileApplication:
        """Step one: check the signed notice of the four items; the application to complete."""
        now = self._clock.now()
        with self._registry.write() as tx:
            try:
                parsed, basis = check_notice(
                    tx,
                    kind=kind,
                    notice=notice,
                    signature=signature,
                    card_certificate_der=card_certificate_der,
                    now=now,
                )
            except BadNotice as exc:
                raise InvalidRequest(str(exc)) from None
            except Refused as exc:
                raise PreconditionFailed(str(exc)) from None
            digest = notice_digest(notice, card_certificate_der)
            if tx.notice_application(digest) is not None:
                raise PreconditionFailed(
                    "this notice already began an application: sign a new notice to apply again"
                )
            application = MobileApplication(
                id=secrets.token_hex(16),
                kind=kind,
                resident_code=basis.card_sign.resident_code,
                card_serial=basis.card_sign.serial,
                holder=parsed.holder,
                begun_at=now,
                expires_at=now + APPLICATION_VALIDITY,
                notice_digest=digest,
            )
            tx.put_mobile_application(application)
        log.info("%s application begun on CARD_SIGN serial %X", kind.name, basis.card_sign.serial)
        return application

    def complete_mobile_application(self, application_id: str, csr_der: bytes) -> Issued:
        """Step two: the public key with a proof of possession; the certificate."""
        if not re.fullmatch(r"[0-9a-f]{32}", application_id):
            raise InvalidRequest("the application id is 32 lower-case hexadecimal digits")
        try:
            csr = check_proof_of_possession(csr_der)
        except BadNotice as exc:
            raise InvalidRequest(str(exc)) from None
        except Refused as exc:
            raise PreconditionFailed(str(exc)) from None
        public_key = load_holder_key(
            csr.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        now = self._clock.now()
        with self._registry.read() as tx:
            application = self._open_application(tx, application_id, now)
            basis = self._mobile_basis(tx, application, now)
        not_after = min(
            now + self._settings.validity[application.kind],
            # A mobile certificate does not outlive the card certificates it rests on.
            basis.card_sign.not_after,
            basis.card.not_after,
        )

        def in_write(tx: RegistryTxn, record: CertificateRecord) -> None:
            # Again inside the write: used by a racing call, or the card lost effect.
            current = self._open_application(tx, application_id, now)
            if self._mobile_basis(tx, current, now).card.serial != basis.card.serial:
                raise PreconditionFailed(
                    "the holder's card certificate changed during issuance; begin again"
                )
            tx.put_mobile_application(replace(current, completed_serial=record.serial))

        return self._issue(
            application.kind,
            application.resident_code,
            basis.card_sign.partition,
            application.holder,
            public_key,
            now,
            not_after,
            card_serial=basis.card.serial,
            in_write=in_write,
        )

    @staticmethod
    def _open_application(tx: RegistryTxn, application_id: str, now: datetime) -> MobileApplication:
        application = tx.mobile_application(application_id)
        if application is None:
            raise NotFound(
                f"no mobile application {application_id}: begin one with a signed notice first"
            )
        if application.completed_serial is not None:
            raise PreconditionFailed(
                f"mobile application {application_id} was already used: it issued "
                f"{application.kind.name} serial {application.completed_serial:X}"
            )
        if now > application.expires_at:
            raise PreconditionFailed(
                f"mobile application {application_id} expired at "
                f"{application.expires_at.isoformat()}: begin again with a new notice"
            )
        return application

    @staticmethod
    def _mobile_basis(
        tx: RegistryTxn, application: MobileApplication, now: datetime
    ) -> MobileBasis:
        card = tx.certificate(CertKind.CARD_SIGN, application.card_serial)
        assert card is not None  # an application is begun on an issued CARD_SIGN only
        try:
            return check_basis(tx, application.kind, card, now)
        except Refused as exc:
            raise PreconditionFailed(str(exc)) from None

    # loss of effect -----------------------------------------------------------------
    def record_loss(
        self,
        kind: CertKind,
        serial: int,
        cause: LossCause,
        reason: CrlReason | None,
        holder_request: HolderRequest | None = None,
    ) -> list[LossEvent]:
        """Record an operator's loss and its cascade, all in one transaction; a holder
        request records whether it was the application (申請) or a notification (届出)."""
        try:
            reason = operator_loss(cause, reason)
            request = holder_request_of(cause, holder_request)
        except Refused as exc:
            raise InvalidRequest(str(exc)) from None
        loss = Loss(time=self._clock.now(), cause=cause, reason=reason)
        try:
            with self._registry.write() as tx:
                event = tx.record_loss(kind, serial, loss)
                if request is not None:
                    tx.put_holder_request(
                        kind, serial, request.name, loss.time.astimezone(JST).date()
                    )
                record = tx.certificate(kind, serial)
                assert record is not None
                record_notice(tx, record, loss)  # 第15条第2項 and its twins
                events = [event, *cascade_card_loss(tx, record, loss)]
        except NotIssued as exc:
            raise NotFound(str(exc)) from None
        except AlreadyLost as exc:
            raise Conflict(str(exc)) from None
        self._log_losses(events)
        return events

    @staticmethod
    def _log_losses(events: list[LossEvent]) -> None:
        for e in events:
            log.info("%s serial %X lost effect: %s", e.kind.name, e.serial, e.loss.cause.name)

    def _end(
        self, tx: RegistryTxn, record: CertificateRecord, loss: Loss, now: datetime
    ) -> list[LossEvent]:
        """One loss of effect and its cascade, inside the caller's transaction."""
        event = tx.record_loss(record.kind, record.serial, loss, recorded_at=now)
        ended = tx.certificate(record.kind, record.serial)
        assert ended is not None
        return [event, *cascade_card_loss(tx, ended, loss, recorded_at=now)]

    # resident events (第12条, 第31条) ------------------------------------------------------
    def record_resident_event(
        self, resident_code: str, facts: ResidentEventFacts
    ) -> list[LossEvent]:
        """Apply a resident event: the losses it causes, or the move-out/move-in notice."""
        check_resident_code(resident_code)
        try:
            ended_kinds = kinds_ended(facts)
        except Refused as exc:
            raise InvalidRequest(str(exc)) from None
        now = self._clock.now()
        loss = Loss(now, LossCause.RESIDENT_CHANGE, DEFAULT_REASON[LossCause.RESIDENT_CHANGE])
        events: list[LossEvent] = []
        with self._registry.write() as tx:
            if not tx.is_resident(resident_code):
                raise NotFound(f"no certificate was ever issued to resident code {resident_code}")
            if facts.event is ResidentEvent.MOVE_IN:
                if tx.move_out(resident_code) is None:
                    raise PreconditionFailed(
                        f"resident code {resident_code} has no move-out notice pending"
                    )
                # Past the deadline the 30 days have passed without a move-in (第31条
                # 第2号) whether or not a sweep has run yet: record that loss first.
                events.extend(self._lapse_move_out(tx, resident_code, now))
                tx.clear_move_out(resident_code)
            if facts.event is ResidentEvent.MOVE_OUT:
                assert facts.planned_date is not None
                tx.put_move_out(MoveOut(resident_code, facts.planned_date, now))
                events.extend(self._lapse_move_out(tx, resident_code, now))
            for record in tx.holder_certificates(resident_code):
                if record.kind in ended_kinds and record.loss is None and record.not_after > now:
                    events.extend(self._end(tx, record, loss, now))
            if facts.event is ResidentEvent.RECORD_DELETED and not facts.deletion_by_move_out:
                tx.clear_move_out(resident_code)  # nothing left for the 30-day rule to end
        self._log_losses(events)
        return events

    def _lapse_move_out(
        self, tx: RegistryTxn, resident_code: str, now: datetime
    ) -> list[LossEvent]:
        """第31条第2号: end the holder's auth certificates if the 30 days have passed."""
        notice = tx.move_out(resident_code)
        if notice is None or not move_out_lapsed(notice.planned_date, now):
            return []
        events: list[LossEvent] = []
        # Dated when recorded (第34条第1項第2号), never back to the deadline.
        loss = Loss(now, LossCause.RESIDENT_CHANGE, DEFAULT_REASON[LossCause.RESIDENT_CHANGE])
        for record in tx.holder_certificates(resident_code):
            if record.kind is CertKind.CARD_AUTH and record.loss is None and record.not_after > now:
                events.extend(self._end(tx, record, loss, now))
        tx.clear_move_out(resident_code)
        return events

    def sweep_move_outs(self) -> list[LossEvent]:
        """The sweep of the 30-day move-out rule; returns the losses it recorded.

        Run at every 00:00 Japan time by the signer (app/sweep_schedule.py), whatever
        the publishing intervals, and before every publish."""
        now = self._clock.now()
        with self._registry.read() as tx:
            due = [m.resident_code for m in tx.move_outs() if move_out_lapsed(m.planned_date, now)]
        events: list[LossEvent] = []
        for code in due:
            with self._registry.write() as tx:  # one holder per transaction
                events.extend(self._lapse_move_out(tx, code, now))
        self._log_losses(events)
        return events

    # notices to holders (第15条第2項 and its twins) ---------------------------------------
    def notices(self, *, pending_only: bool) -> list[HolderNotice]:
        with self._registry.read() as tx:
            return tx.notices(pending_only=pending_only)

    def mark_notice_sent(self, notice_id: int) -> HolderNotice:
        """An operator's word that the notice reached the post (a spooled one, say)."""
        with self._registry.write() as tx:
            notice = tx.notice(notice_id)
            if notice is None:
                raise NotFound(f"no notice {notice_id} in the outbox")
            if notice.sent_at is not None:
                raise PreconditionFailed(
                    f"notice {notice_id} was already sent at {notice.sent_at.isoformat()}"
                )
            sent = replace(notice, sent_at=self._clock.now())
            tx.update_notice(sent)
        log.info("notice %d marked sent", notice_id)
        return sent

    # 保存期間 -------------------------------------------------------------------------------
    def purge_past_retention(self) -> Purged:
        """Delete from the registry what no retention period keeps any more."""
        return purge(self._registry, self._publisher.retention, self._clock.now())

    def midnight(self) -> None:
        """What the signer does at every 00:00 JST: the 第31条 sweep, then the purge."""
        self.sweep_move_outs()
        self.purge_past_retention()

    # issuer key compromise (第14条) ------------------------------------------------------
    def record_issuer_compromise(
        self, kind: CertKind, key_id: bytes, nature: CompromiseNature | None = None
    ) -> CompromiseResult:
        issuer = self._authority.issuer(key_id)
        if issuer is None or issuer.kind is None:
            raise NotFound(f"no issuing CA generation with key id {key_id.hex()}")
        if issuer.kind is not kind:
            raise InvalidRequest(
                f"generation {key_id.hex()} issues {issuer.kind.name}, not {kind.name}"
            )
        # Whole seconds: the ARL, which vouches for the time, has no finer resolution.
        compromise = Compromise(key_id, kind, self._clock.now().replace(microsecond=0), nature)
        try:
            with self._registry.write() as tx:
                tx.put_compromise(compromise)
        except AlreadyCompromised as exc:
            raise Conflict(str(exc)) from None
        # Counted after the commit, so the count does not hold the registry's writer.
        with self._registry.read() as tx:
            count = sum(1 for r in tx.certificates(kind) if r.issuer_key_id == key_id)
        log.warning(
            "issuer %s generation %s compromised: %d certificates lost effect",
            kind.name,
            key_id.hex(),
            count,
        )
        return CompromiseResult(compromise, issuer, count)

    # consent to signing records (第18条第3項) ----------------------------------------------
    def grant_consent(
        self, resident_code: str, verifier: str, *, successors: bool = False
    ) -> Consent:
        """Consent covering the holder's signing certificates in effect now, and with
        `successors` their later ones too (law/consent_scope.py)."""
        return self._set_consent(resident_code, verifier, grant=True, successors=successors)

    def withdraw_consent(self, resident_code: str, verifier: str) -> Consent:
        return self._set_consent(resident_code, verifier, grant=False)

    def _set_consent(
        self, resident_code: str, verifier: str, *, grant: bool, successors: bool = False
    ) -> Consent:
        check_resident_code(resident_code)
        check_verifier(verifier)
        now = self._clock.now()
        with self._registry.write() as tx:
            # Consent is to a verifier the registry knows; withdrawing one given to a
            # verifier since removed stays possible.
            if grant and tx.verifier(verifier) is None:
                raise NotFound(
                    f"no verifier {verifier!r} is registered: add it before recording consent to it"
                )
            if not any(r.kind.is_signing for r in tx.holder_certificates(resident_code)):
                raise NotFound(
                    f"resident code {resident_code} was never issued a signing certificate"
                )
            current = tx.consent(resident_code, verifier)
            if grant:
                try:
                    covered = scope_at_grant(tx.holder_certificates(resident_code), now)
                except Refused as exc:
                    raise PreconditionFailed(str(exc)) from None
                if (
                    current is not None
                    and current.in_effect
                    and (current.covers, current.successors) == (covered, successors)
                ):
                    return current  # granting twice changes nothing
                # A new grant (a later certificate, or "and successors") replaces the scope.
                consent = Consent(resident_code, verifier, now, None, covered, successors)
            else:
                if current is None or not current.in_effect:
                    raise PreconditionFailed(
                        f"resident code {resident_code} has no consent in effect for {verifier}"
                    )
                consent = replace(current, withdrawn_at=now)
            tx.set_consent(consent)
        log.info("consent for %s %s", verifier, "granted" if grant else "withdrawn")
        return consent

    def consents(self, resident_code: str, verifier: str | None) -> list[Consent]:
        check_resident_code(resident_code)
        if verifier:
            check_verifier(verifier)
        with self._registry.read() as tx:
            if not tx.is_resident(resident_code):
                raise NotFound(f"no certificate was ever issued to resident code {resident_code}")
            return [c for c in tx.consents(resident_code) if not verifier or c.verifier == verifier]

    # snapshots ------------------------------------------------------------------------
    def publish(self, *, full: bool = True) -> PublishedSnapshot:
        """Publish now: a full snapshot, or a delta when one can follow the last full."""

        def now() -> PublishedSnapshot:
            self.sweep_move_outs()
            if full:
                return self._publisher.publish_full()
            return self._publisher.publish_delta_or_full()

        return self._counted(now)

    def publish_scheduled(self, full_interval: timedelta) -> PublishedSnapshot | None:
        """The periodic tick: a full when one is due, else a delta when anything changed.

        While publishing fails, every tick tries, changed or not, so the account says
        "recovered" within one tick of the cause going away.
        """
        failing = self._publish_status.state().failing

        def tick() -> PublishedSnapshot | None:
            self.sweep_move_outs()
            if failing:
                return self._publisher.publish_delta_or_full()
            return self._publisher.publish_scheduled(full_interval)

        return self._counted(tick)

    def _counted(self, publish: Callable[[], _P]) -> _P:
        """Run a publish and keep the account of it (what failed, and since when)."""
        try:
            published = publish()
        except Exception as exc:
            self._publish_status.failed(exc)
            raise
        if published is not None:
            self._publish_status.succeeded(self._clock.now())
        return published

    def publishing(self, *, check_key: bool = True) -> PublishState:
        """Whether a change recorded now reaches the responders: the last publish, and
        whether the key that signs the next snapshot can be used now (a change may come
        before the first periodic publish that would fail). `check_key=False` skips
        the second, for a change that has just used the HSM."""
        state = self._publish_status.state()
        if state.failing or not check_key:
            return state
        try:
            self._publisher.check_signer()
        except (hsm.HsmError, AuthorityError) as exc:
            return PublishState(failing=True, error=str(exc), last_published=state.last_published)
        return state

    # the published report (第41条) ------------------------------------------------------
    def sign_report(self, content: bytes) -> tuple[bytes, x509.Certificate]:
        """A detached CMS signature over a report to publish, and the certificate that
        verifies it: the snapshot key's, which the root certified."""
        if not content:
            raise InvalidRequest("the report is empty")
        if len(content) > MAX_REPORT:
            raise InvalidRequest(f"the report is larger than {MAX_REPORT} bytes")
        key, certificate = self._authority.snapshot_signer()
        with self._queue.slot():
            signature = detached_signature(key, certificate, content)
        log.info("signed a report of %d bytes for publication", len(content))
        return signature, certificate

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
                # A compromised key certifies nothing more (第14条); its generation is
                # answered through the compromise and the root's ARL.
                exclude=set(self.compromises()),
            )

    def issuers(self) -> tuple[IssuerRecord, list[IssuerRecord]]:
        return self._authority.root(), self._authority.issuers()

    def compromises(self) -> dict[bytes, Compromise]:
        with self._registry.read() as tx:
            return dict(tx.compromises())


def certify_ocsp_signer(
    authority: Authority,
    csr_der: bytes,
    key_ids: list[bytes],
    *,
    now: datetime,
    backdate: timedelta,
    validity: timedelta,
    exclude: Collection[bytes] = (),
) -> list[tuple[IssuerRecord, x509.Certificate]]:
    """Delegated OCSP-signer certificates for the CSR's key, one per issuer generation.

    ``key_ids`` selects the generations; empty means every generation whose CA
    certificate has not expired; generations in ``exclude`` (compromised) are left
    out. Each certificate is linted before it is returned.
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
        if issuer.key_id in exclude:
            continue
        key = authority.key(issuer)
        cert = cert_profile.ocsp_signer_certificate(
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
