"""SignerService: translates between protobuf and the signer's domain service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.domain import CrlReason, LossCause, Role, Verifier, serial_to_bytes
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2, verifiers_pb2
from jpki_va.server.access.gate import Caller, Operators
from jpki_va.server.law.issuer_compromise import CompromiseNature
from jpki_va.server.law.loss_recording import HolderRequest
from jpki_va.server.law.resident_change import ResidentEvent, ResidentEventFacts, move_out_deadline
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import Consent, HolderNotice, IssuerRecord, LossEvent
from jpki_va.server.rpc.identity import fingerprint
from jpki_va.server.rpc.pb import kind_from_pb, serial_from_pb, timestamp
from jpki_va.server.signer.publish_status import PublishState
from jpki_va.server.signer.service import InvalidRequest, Issued, IssueRequest, Signer
from jpki_va.server.signer.verifier_registry import VerifierRegistry


def loss_to_pb(event: LossEvent) -> signer_pb2.LossOfEffect:
    out = signer_pb2.LossOfEffect(
        kind=int(event.kind),  # type: ignore[arg-type]
        serial=serial_to_bytes(event.serial),
        cause=int(event.loss.cause),  # type: ignore[arg-type]
        reason=int(event.loss.reason),  # type: ignore[arg-type]
        time=timestamp(event.loss.time),
        recorded_at=timestamp(event.recorded_at),
    )
    if event.trigger is not None:
        out.trigger_kind = int(event.trigger.kind)  # type: ignore[assignment]
        out.trigger_serial = serial_to_bytes(event.trigger.serial)
        out.trigger_cause = int(event.trigger.cause)  # type: ignore[assignment]
    return out


def publishing_to_pb(state: PublishState) -> signer_pb2.Publishing:
    out = signer_pb2.Publishing(
        failing=state.failing, error=state.error or "", failures=state.failures
    )
    if state.last_published is not None:
        out.last_published.CopyFrom(timestamp(state.last_published))
    return out


def consent_to_pb(consent: Consent) -> signer_pb2.Consent:
    out = signer_pb2.Consent(
        verifier=consent.verifier,
        granted_at=timestamp(consent.granted_at),
        covers=[
            va_pb2.KindSerial(kind=int(k), serial=serial_to_bytes(s))  # type: ignore[arg-type]
            for k, s in consent.covers
        ],
        successors=consent.successors,
    )
    if consent.withdrawn_at is not None:
        out.withdrawn_at.CopyFrom(timestamp(consent.withdrawn_at))
    return out


def notice_to_pb(notice: HolderNotice) -> signer_pb2.HolderNotice:
    out = signer_pb2.HolderNotice(
        id=notice.id,
        kind=int(notice.kind),  # type: ignore[arg-type]
        serial=serial_to_bytes(notice.serial),
        article=notice.article,
        name=notice.name,
        address=notice.address,
        municipality_code=notice.municipality_code,
        lost_at=timestamp(notice.lost_at),
        text=notice.text,
        delivery=notice.delivery,
    )
    if notice.delivered_at is not None:
        out.delivered_at.CopyFrom(timestamp(notice.delivered_at))
    if notice.sent_at is not None:
        out.sent_at.CopyFrom(timestamp(notice.sent_at))
    return out


def issuer_to_pb(record: IssuerRecord) -> va_pb2.Issuer:
    return va_pb2.Issuer(
        kind=0 if record.kind is None else int(record.kind),  # type: ignore[arg-type]
        key_id=record.key_id,
        certificate_der=record.certificate_der,
        active=record.active,
    )


def verifier_to_pb(verifier: Verifier) -> verifiers_pb2.VerifierInfo:
    return verifiers_pb2.VerifierInfo(
        id=verifier.id,
        roles=[int(r) for r in sorted(verifier.roles)],  # type: ignore[misc]
        cert_fingerprints=list(verifier.cert_fingerprints),
        agreement=verifier.agreement or "",
        agreement_date=verifier.agreement_date or "",
        agreement_terms=verifier.agreement_terms or "",
        agreement_until=verifier.agreement_until or "",
    )


def _roles(values: list[int]) -> frozenset[Role]:
    roles = set()
    for value in values:
        if value == verifiers_pb2.VERIFIER_ROLE_UNSPECIFIED:
            raise InvalidRequest("role is unspecified")
        try:
            roles.add(Role(value))
        except ValueError:
            raise InvalidRequest(f"unknown role {value}") from None
    return frozenset(roles)


def _fingerprints(ders: list[bytes]) -> tuple[bytes, ...]:
    out = []
    for der in ders:
        try:
            out.append(fingerprint(x509.load_der_x509_certificate(der)))
        except ValueError as exc:
            raise InvalidRequest(f"client certificate is not DER X.509: {exc}") from None
    return tuple(out)


class SignerServicer(signer_pb2_grpc.SignerServiceServicer):
    """Registry operations need an operator; IssueVerifierToken is the verifier's own call."""

    def __init__(
        self,
        signer: Signer,
        verifiers: VerifierRegistry,
        operators: Operators,
        caller: Callable[[grpc.ServicerContext], Caller],
    ) -> None:
        self._signer = signer
        self._verifiers = verifiers
        self._operators = operators
        self._caller = caller

    def _operator(self, context: grpc.ServicerContext) -> None:
        self._operators.require(self._caller(context))

    def IssueCertificate(
        self, request: signer_pb2.IssueCertificateRequest, context: grpc.ServicerContext
    ) -> signer_pb2.IssueCertificateResponse:
        self._operator(context)
        if request.card_serial or request.application_signature:
            raise InvalidRequest(
                "card_serial and application_signature belonged to the one-step mobile "
                "application, which is gone: use BeginMobileApplication and "
                "CompleteMobileApplication (第16条の2, 第35条の2)"
            )
        holder = request.holder
        issued = self._signer.issue(
            IssueRequest(
                kind=kind_from_pb(request.kind),
                resident_code=request.resident_code,
                municipality_code=request.municipality_code,
                holder=Holder(
                    name=holder.name,
                    address=holder.address,
                    birth_date=holder.birth_date,
                    sex=holder.sex,
                ),
                public_key_der=request.public_key_der,
            )
        )
        return self._issued(issued)

    def BeginMobileApplication(
        self, request: signer_pb2.BeginMobileApplicationRequest, context: grpc.ServicerContext
    ) -> signer_pb2.BeginMobileApplicationResponse:
        self._operator(context)
        application = self._signer.begin_mobile_application(
            kind_from_pb(request.kind),
            request.notice,
            request.notice_signature,
            request.card_certificate_der,
        )
        holder = application.holder
        return signer_pb2.BeginMobileApplicationResponse(
            application_id=application.id,
            expires_at=timestamp(application.expires_at),
            holder=signer_pb2.HolderInfo(
                name=holder.name,
                address=holder.address,
                birth_date=holder.birth_date,
                sex=holder.sex,
            ),
            card_serial=serial_to_bytes(application.card_serial),
        )

    def CompleteMobileApplication(
        self, request: signer_pb2.CompleteMobileApplicationRequest, context: grpc.ServicerContext
    ) -> signer_pb2.CompleteMobileApplicationResponse:
        self._operator(context)
        issued = self._signer.complete_mobile_application(request.application_id, request.csr)
        return signer_pb2.CompleteMobileApplicationResponse(issued=self._issued(issued))

    def SignReport(
        self, request: signer_pb2.SignReportRequest, context: grpc.ServicerContext
    ) -> signer_pb2.SignReportResponse:
        self._operator(context)
        signature, certificate = self._signer.sign_report(request.content)
        return signer_pb2.SignReportResponse(
            signature_der=signature, signer_certificate_der=certificate.public_bytes(Encoding.DER)
        )

    def _issued(self, issued: Issued) -> signer_pb2.IssueCertificateResponse:
        record = issued.record
        return signer_pb2.IssueCertificateResponse(
            kind=int(record.kind),  # type: ignore[arg-type]
            certificate_der=record.certificate_der,
            serial=serial_to_bytes(record.serial),
            issuer_certificate_der=issued.issuer_certificate.public_bytes(Encoding.DER),
            superseded=[loss_to_pb(e) for e in issued.superseded],
            # The issuance has just signed with the HSM: no need to try its key again.
            publishing=publishing_to_pb(self._signer.publishing(check_key=False)),
        )

    def RecordLoss(
        self, request: signer_pb2.RecordLossRequest, context: grpc.ServicerContext
    ) -> signer_pb2.RecordLossResponse:
        self._operator(context)
        if request.cause == va_pb2.LOSS_CAUSE_UNSPECIFIED:
            raise InvalidRequest("loss cause is required")
        try:
            cause = LossCause(request.cause)
            reason = CrlReason(request.reason) if request.reason else None
            holder_request = (
                HolderRequest(request.holder_request) if request.holder_request else None
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        kind, serial = kind_from_pb(request.kind), serial_from_pb(request.serial)
        events = self._signer.record_loss(kind, serial, cause, reason, holder_request)
        changes = [loss_to_pb(e) for e in events]
        if cause is LossCause.HOLDER_REQUEST:  # the first change is the one requested
            recorded = holder_request or HolderRequest.APPLICATION
            changes[0].holder_request = int(recorded)  # type: ignore[assignment]
        return signer_pb2.RecordLossResponse(
            changes=changes, publishing=publishing_to_pb(self._signer.publishing())
        )

    def RecordResidentEvent(
        self, request: signer_pb2.RecordResidentEventRequest, context: grpc.ServicerContext
    ) -> signer_pb2.RecordResidentEventResponse:
        self._operator(context)
        if request.event == signer_pb2.RESIDENT_EVENT_UNSPECIFIED:
            raise InvalidRequest("resident event is required")
        try:
            event = ResidentEvent(request.event)
            planned = date.fromisoformat(request.planned_date) if request.planned_date else None
        except ValueError as exc:
            raise InvalidRequest(f"bad resident event or planned date: {exc}") from None
        events = self._signer.record_resident_event(
            request.resident_code,
            ResidentEventFacts(
                event=event,
                minor=request.minor,
                planned_date=planned,
                deletion_by_move_out=request.deletion_by_move_out,
            ),
        )
        reply = signer_pb2.RecordResidentEventResponse(
            changes=[loss_to_pb(e) for e in events],
            publishing=publishing_to_pb(self._signer.publishing()),
        )
        if planned is not None:
            reply.move_out_deadline.CopyFrom(timestamp(move_out_deadline(planned)))
        return reply

    def RecordIssuerCompromise(
        self, request: signer_pb2.RecordIssuerCompromiseRequest, context: grpc.ServicerContext
    ) -> signer_pb2.RecordIssuerCompromiseResponse:
        self._operator(context)
        if not request.issuer_key_id:
            raise InvalidRequest("issuer key id is required")
        try:
            nature = None if request.nature == 0 else CompromiseNature(request.nature)
        except ValueError:
            raise InvalidRequest(f"unknown compromise nature {request.nature}") from None
        result = self._signer.record_issuer_compromise(
            kind_from_pb(request.kind), bytes(request.issuer_key_id), nature
        )
        return signer_pb2.RecordIssuerCompromiseResponse(
            issuer=issuer_to_pb(result.issuer),
            compromised_at=timestamp(result.compromise.time),
            certificates=result.certificates,
            publishing=publishing_to_pb(self._signer.publishing()),
        )

    def RecordConsent(
        self, request: signer_pb2.RecordConsentRequest, context: grpc.ServicerContext
    ) -> signer_pb2.RecordConsentResponse:
        self._operator(context)
        if request.grant:
            consent = self._signer.grant_consent(
                request.resident_code, request.verifier, successors=request.successors
            )
        else:
            consent = self._signer.withdraw_consent(request.resident_code, request.verifier)
        return signer_pb2.RecordConsentResponse(consent=consent_to_pb(consent))

    def ListConsents(
        self, request: signer_pb2.ListConsentsRequest, context: grpc.ServicerContext
    ) -> signer_pb2.ListConsentsResponse:
        self._operator(context)
        consents = self._signer.consents(request.resident_code, request.verifier or None)
        return signer_pb2.ListConsentsResponse(consents=[consent_to_pb(c) for c in consents])

    def PublishSnapshot(
        self, request: signer_pb2.PublishSnapshotRequest, context: grpc.ServicerContext
    ) -> signer_pb2.PublishSnapshotResponse:
        self._operator(context)
        published = self._signer.publish(full=request.full)
        return signer_pb2.PublishSnapshotResponse(
            sequence=published.sequence,
            name=published.path.name,
            crl_count=published.crl_count,
            record_count=published.record_count,
            type=published.type,
            loss_count=published.event_count,
        )

    def IssueOcspSignerCertificate(
        self,
        request: signer_pb2.IssueOcspSignerCertificateRequest,
        context: grpc.ServicerContext,
    ) -> signer_pb2.IssueOcspSignerCertificateResponse:
        self._operator(context)
        issued = self._signer.ocsp_signer_certificates(
            request.csr_der, list(request.issuer_key_ids)
        )
        return signer_pb2.IssueOcspSignerCertificateResponse(
            certificates=[
                signer_pb2.OcspSignerCertificate(
                    kind=0 if issuer.kind is None else int(issuer.kind),  # type: ignore[arg-type]
                    issuer_key_id=issuer.key_id,
                    certificate_der=cert.public_bytes(Encoding.DER),
                    issuer_certificate_der=issuer.certificate_der,
                )
                for issuer, cert in issued
            ]
        )

    def ListNotices(
        self, request: signer_pb2.ListNoticesRequest, context: grpc.ServicerContext
    ) -> signer_pb2.ListNoticesResponse:
        self._operator(context)
        notices = self._signer.notices(pending_only=request.pending_only)
        return signer_pb2.ListNoticesResponse(notices=[notice_to_pb(n) for n in notices])

    def MarkNoticeSent(
        self, request: signer_pb2.MarkNoticeSentRequest, context: grpc.ServicerContext
    ) -> signer_pb2.MarkNoticeSentResponse:
        self._operator(context)
        if request.id == 0:
            raise InvalidRequest("name the notice by its id (1 or more)")
        notice = self._signer.mark_notice_sent(request.id)
        return signer_pb2.MarkNoticeSentResponse(notice=notice_to_pb(notice))

    def ListIssuers(
        self, request: va_pb2.ListIssuersRequest, context: grpc.ServicerContext
    ) -> va_pb2.ListIssuersResponse:
        self._operator(context)
        root, issuers = self._signer.issuers()
        compromises = self._signer.compromises()
        out = []
        for record in issuers:
            issuer = issuer_to_pb(record)
            compromise = compromises.get(record.key_id)
            if compromise is not None:
                issuer.compromised_at.CopyFrom(timestamp(compromise.time))
            out.append(issuer)
        return va_pb2.ListIssuersResponse(root_certificate_der=root.certificate_der, issuers=out)

    def AddVerifier(
        self, request: verifiers_pb2.AddVerifierRequest, context: grpc.ServicerContext
    ) -> verifiers_pb2.AddVerifierResponse:
        self._operator(context)
        verifier = self._verifiers.add(
            Verifier(
                id=request.id,
                roles=_roles(list(request.roles)),
                cert_fingerprints=_fingerprints(list(request.client_certificate_der)),
                agreement=request.agreement or None,
                agreement_date=request.agreement_date or None,
                agreement_terms=request.agreement_terms or None,
                agreement_until=request.agreement_until or None,
            ),
            replace=request.replace,
        )
        return verifiers_pb2.AddVerifierResponse(verifier=verifier_to_pb(verifier))

    def RemoveVerifier(
        self, request: verifiers_pb2.RemoveVerifierRequest, context: grpc.ServicerContext
    ) -> verifiers_pb2.RemoveVerifierResponse:
        self._operator(context)
        self._verifiers.remove(request.id)
        return verifiers_pb2.RemoveVerifierResponse()

    def ListVerifiers(
        self, request: verifiers_pb2.ListVerifiersRequest, context: grpc.ServicerContext
    ) -> verifiers_pb2.ListVerifiersResponse:
        self._operator(context)
        return verifiers_pb2.ListVerifiersResponse(
            verifiers=[verifier_to_pb(v) for v in self._verifiers.list()]
        )

    def IssueVerifierToken(
        self, request: verifiers_pb2.IssueVerifierTokenRequest, context: grpc.ServicerContext
    ) -> verifiers_pb2.IssueVerifierTokenResponse:
        issued = self._verifiers.issue_token(self._caller(context))
        return verifiers_pb2.IssueVerifierTokenResponse(
            token=issued.token, not_after=timestamp(issued.not_after)
        )
