"""StatusService: translates between protobuf and the status source. Nothing else."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.timestamp_pb2 import Timestamp

from protos import va_pb2, va_pb2_grpc
from server.access import Caller, Gate
from server.clock import Clock
from server.domain import (
    CertKind,
    Provision,
    Status,
    Verifier,
    serial_from_bytes,
    serial_to_bytes,
)
from server.law.entitlements import NotEntitled, status_provision
from server.ocsp import OcspResponder
from server.ocsp_access import GatedOcsp
from server.status import (
    Answer,
    BadRequest,
    IndexHolder,
    Resolver,
    StatusSource,
    unknown_answer,
)


@dataclass(frozen=True)
class StreamLimits:
    max_batch: int = 10_000  # requests in one CheckStream batch
    max_batches: int = 100_000  # batches in one CheckStream


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def answer_to_pb(answer: Answer) -> va_pb2.CertificateStatus:
    out = va_pb2.CertificateStatus(
        kind=0 if answer.kind is None else int(answer.kind),  # type: ignore[arg-type]
        serial=serial_to_bytes(answer.serial),
        status=int(answer.status),  # type: ignore[arg-type]
        as_of=timestamp(answer.as_of),
        index_sequence=answer.sequence,
    )
    record = answer.record
    if record is not None:
        out.not_before.CopyFrom(timestamp(record.not_before))
        out.not_after.CopyFrom(timestamp(record.not_after))
        out.partition = record.partition
        out.issuer_key_id = record.issuer_key_id
        if answer.status is Status.REVOKED and record.loss is not None:
            out.revocation.time.CopyFrom(timestamp(record.loss.time))
            out.revocation.cause = int(record.loss.cause)  # type: ignore[assignment]
            out.revocation.reason = int(record.loss.reason)  # type: ignore[assignment]
    return out


class StatusServicer(va_pb2_grpc.StatusServiceServicer):
    def __init__(
        self,
        source: StatusSource,
        resolver: Resolver,
        ocsp: OcspResponder,
        holder: IndexHolder,
        clock: Clock,
        roots: list[x509.Certificate],
        gate: Gate,
        caller: Callable[[grpc.ServicerContext], Caller],
        limits: StreamLimits | None = None,
    ) -> None:
        self._roots = roots
        self._limits = limits or StreamLimits()
        self._source = source
        self._resolver = resolver
        self._ocsp = GatedOcsp(ocsp, gate)
        self._holder = holder
        self._clock = clock
        self._gate = gate
        self._caller = caller

    def _target(self, request: va_pb2.CheckRequest) -> tuple[CertKind | None, int, datetime]:
        """(kind, serial, as_of) the request names; kind None: an issuer we do not serve."""
        as_of = (
            request.as_of.ToDatetime(tzinfo=UTC) if request.HasField("as_of") else self._clock.now()
        )
        ref = request.cert
        which = ref.WhichOneof("ref")
        if which == "kind_serial":
            if ref.kind_serial.kind == va_pb2.CERT_KIND_UNSPECIFIED:
                raise BadRequest("certificate kind is required")
            try:
                kind = CertKind(ref.kind_serial.kind)
            except ValueError:
                raise BadRequest(f"unknown certificate kind {ref.kind_serial.kind}") from None
            return kind, _serial(ref.kind_serial.serial), as_of
        if which == "certificate_der":
            kind, serial = self._resolver.from_certificate(ref.certificate_der)
            return kind, serial, as_of
        if which == "cert_id":
            cid = ref.cert_id
            issuer = self._resolver.issuer_by_hash(
                cid.hash_algorithm.lower(), cid.issuer_name_hash, cid.issuer_key_hash
            )
            return (None if issuer is None else issuer.kind), _serial(cid.serial), as_of
        raise BadRequest("no certificate given (kind_serial, certificate_der or cert_id)")

    def _answer(
        self, verifier: Verifier, request: va_pb2.CheckRequest, counts: Counter[Provision]
    ) -> Answer:
        """Check the entitlement, answer, and add the provision to `counts`."""
        kind, serial, as_of = self._target(request)
        if kind is None:
            # Not an issuer we answer for: the certificate is unknown to us, and no
            # status information of the law is given.
            return unknown_answer(self._holder.get(), None, serial, as_of)
        provision = status_provision(kind)
        self._gate.check(verifier, provision)
        answer = self._source.status(kind, serial, as_of)
        counts[provision] += 1
        return answer

    def Check(
        self, request: va_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> va_pb2.CheckResponse:
        verifier = self._gate.identify(self._caller(context))
        counts: Counter[Provision] = Counter()
        answer = self._answer(verifier, request, counts)
        self._gate.provided(verifier, counts)
        return va_pb2.CheckResponse(status=answer_to_pb(answer))

    def CheckStream(
        self,
        request_iterator: Iterator[va_pb2.CheckBatchRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[va_pb2.CheckBatchResponse]:
        verifier = self._gate.identify(self._caller(context))
        limits = self._limits
        for count, batch in enumerate(request_iterator, 1):
            if count > limits.max_batches:
                raise BadRequest(f"stream exceeds {limits.max_batches} batches")
            if not batch.requests:
                raise BadRequest("empty batch")
            if len(batch.requests) > limits.max_batch:
                raise BadRequest(f"batch of {len(batch.requests)} exceeds {limits.max_batch}")
            results = []
            counts: Counter[Provision] = Counter()
            for request in batch.requests:
                if not context.is_active():
                    # Cancelled or past its deadline: nobody reads the rest, and this
                    # batch is never delivered, so nothing of it counts as provided.
                    return
                try:
                    answer = self._answer(verifier, request, counts)
                    results.append(va_pb2.CheckResult(status=answer_to_pb(answer)))
                except NotEntitled as exc:
                    results.append(va_pb2.CheckResult(error=f"PERMISSION_DENIED: {exc}"))
                except (BadRequest, ValueError) as exc:
                    results.append(va_pb2.CheckResult(error=str(exc)))
            self._gate.provided(verifier, counts)
            yield va_pb2.CheckBatchResponse(results=results)

    def Ocsp(
        self, request: va_pb2.OcspRequest, context: grpc.ServicerContext
    ) -> va_pb2.OcspResponse:
        reply = self._ocsp.respond(self._caller(context), request.der)
        return va_pb2.OcspResponse(der=reply.der)

    def ListIssuers(
        self, request: va_pb2.ListIssuersRequest, context: grpc.ServicerContext
    ) -> va_pb2.ListIssuersResponse:
        # Public information, but only for registered verifiers.
        self._gate.identify(self._caller(context))
        index = self._holder.get()
        issuers = []
        for entry in index.issuers.values():
            issuer = va_pb2.Issuer(
                kind=int(entry.kind),  # type: ignore[arg-type]
                key_id=entry.key_id,
                certificate_der=entry.certificate.public_bytes(Encoding.DER),
                active=entry.active,
            )
            compromise = index.compromises.get(entry.key_id)
            if compromise is not None:  # the announcement (第15条第3項)
                issuer.compromised_at.CopyFrom(timestamp(compromise.time))
            issuers.append(issuer)
        return va_pb2.ListIssuersResponse(
            root_certificate_der=self._roots[0].public_bytes(Encoding.DER) if self._roots else b"",
            issuers=issuers,
        )


def _serial(raw: bytes) -> int:
    try:
        return serial_from_bytes(raw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
