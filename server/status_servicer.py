"""StatusService: translates between protobuf and the status source. Nothing else."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.timestamp_pb2 import Timestamp

from protos import va_pb2, va_pb2_grpc
from server.access import Caller, Gate
from server.batch_wire import batch_response
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
    Brief,
    BriefSource,
    IndexHolder,
    Resolver,
    StatusSource,
    Target,
    brief_of,
    unknown_answer,
)


@dataclass(frozen=True)
class StreamLimits:
    max_batch: int = 10_000  # requests in one CheckStream batch
    max_batches: int = 100_000  # batches in one CheckStream


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_time(out: Timestamp, when: datetime) -> None:
    """`out.FromDatetime(when)` (naive means UTC), without its time-tuple round trip."""
    delta = (when if when.tzinfo is not None else when.replace(tzinfo=UTC)) - _EPOCH
    out.seconds = delta.days * 86_400 + delta.seconds
    out.nanos = delta.microseconds * 1000


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    set_time(ts, when)
    return ts


def fill_status(out: va_pb2.CertificateStatus, answer: Answer) -> None:
    """Write `answer` into a fresh CertificateStatus in place (no message copies)."""
    if answer.kind is not None:
        out.kind = answer.kind  # type: ignore[assignment]
    out.serial = serial_to_bytes(answer.serial)
    out.status = answer.status  # type: ignore[assignment]
    set_time(out.as_of, answer.as_of)
    out.index_sequence = answer.sequence
    record = answer.record
    if record is not None:
        set_time(out.not_before, record.not_before)
        set_time(out.not_after, record.not_after)
        out.partition = record.partition
        out.issuer_key_id = record.issuer_key_id
        loss = record.loss
        if answer.status is Status.REVOKED and loss is not None:
            revocation = out.revocation
            set_time(revocation.time, loss.time)
            revocation.cause = loss.cause  # type: ignore[assignment]
            revocation.reason = loss.reason  # type: ignore[assignment]


def _set_micros(out: Timestamp, value: int) -> None:
    seconds, micro = divmod(value, 1_000_000)
    out.seconds = seconds
    out.nanos = micro * 1000


def fill_brief(out: va_pb2.CertificateStatus, brief: Brief) -> None:
    """`fill_status` for a brief: the same message from the index's integers. CheckStream
    writes these bytes itself (server/batch_wire.py), checked against this."""
    if brief.kind is not None:
        out.kind = brief.kind  # type: ignore[assignment]
    out.serial = serial_to_bytes(brief.serial)
    out.status = brief.status  # type: ignore[assignment]
    _set_micros(out.as_of, brief.as_of)
    out.index_sequence = brief.sequence
    record = brief.record
    if record is not None:
        _set_micros(out.not_before, record.not_before)
        _set_micros(out.not_after, record.not_after)
        out.partition = record.partition
        out.issuer_key_id = record.issuer_key_id
        if brief.status is Status.REVOKED and record.lost_at is not None:
            revocation = out.revocation
            _set_micros(revocation.time, record.lost_at)
            revocation.cause = record.cause  # type: ignore[assignment]
            revocation.reason = record.reason  # type: ignore[assignment]


def answer_to_pb(answer: Answer) -> va_pb2.CertificateStatus:
    out = va_pb2.CertificateStatus()
    fill_status(out, answer)
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

    def _target(
        self, request: va_pb2.CheckRequest, now: datetime | None = None
    ) -> tuple[CertKind | None, int, datetime]:
        """(kind, serial, as_of) the request names; kind None: an issuer we do not serve.

        `as_of` defaults to `now`, or the clock's time when `now` is None.
        """
        if request.HasField("as_of"):
            as_of = request.as_of.ToDatetime(tzinfo=UTC)
        else:
            as_of = self._clock.now() if now is None else now
        ref = request.cert
        which = ref.WhichOneof("ref")
        if which == "kind_serial":
            return *kind_serial(ref.kind_serial), as_of
        if which == "certificate_der":
            kind, serial = self._resolver.from_certificate(ref.certificate_der)
            return kind, serial, as_of
        if which == "cert_id":
            cid = ref.cert_id
            issuer = self._resolver.issuer_by_hash(
                cid.hash_algorithm.lower(), cid.issuer_name_hash, cid.issuer_key_hash
            )
            return (None if issuer is None else issuer.kind), serial_from_pb(cid.serial), as_of
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

    def CheckStream(  # type: ignore[override]  # bytes: see add_status_service
        self,
        request_iterator: Iterator[va_pb2.CheckBatchRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        """Yields each batch's CheckBatchResponse serialized (server/batch_wire.py)."""
        verifier = self._gate.identify(self._caller(context))
        limits = self._limits
        for count, batch in enumerate(request_iterator, 1):
            if count > limits.max_batches:
                raise BadRequest(f"stream exceeds {limits.max_batches} batches")
            if not batch.requests:
                raise BadRequest("empty batch")
            if len(batch.requests) > limits.max_batch:
                raise BadRequest(f"batch of {len(batch.requests)} exceeds {limits.max_batch}")
            response = self._batch(verifier, batch.requests, context)
            if response is None:
                return
            yield response

    def _batch(
        self,
        verifier: Verifier,
        requests: Sequence[va_pb2.CheckRequest],
        context: grpc.ServicerContext,
    ) -> bytes | None:
        """One batch answered as `Check` answers each item, with errors per item.

        The batch is one instant (`as_of` defaults to one clock reading), its
        entitlements are checked once per kind, its statuses come from one
        lookup of the source, and its provisions are recorded in one ledger commit
        before it leaves. None: the call ended meanwhile and nothing was provided.
        """
        now = self._clock.now()
        # Per kind: the provision it is, or the refusal text when the verifier lacks it.
        entitled: dict[CertKind, Provision | str] = {}
        # Per request: its answer, an error text, or the position of its target.
        slots: list[Brief | str | int] = []
        targets: list[Target] = []
        counts: Counter[Provision] = Counter()
        for request in requests:
            kind, serial = _plain_kind_serial(request)
            as_of = now
            if serial == 0:  # anything else: the general reading, and its errors
                try:
                    found, serial, as_of = self._target(request, now)
                except ValueError as exc:  # BadRequest included
                    slots.append(str(exc))
                    continue
                if found is None:
                    # Not an issuer we answer for (see `_answer`).
                    slots.append(brief_of(unknown_answer(self._holder.get(), None, serial, as_of)))
                    continue
                kind = found
            provision = entitled.get(kind)
            if provision is None:
                provision = entitled[kind] = self._entitlement(verifier, kind)
            if isinstance(provision, str):
                slots.append(provision)
                continue
            counts[provision] += 1
            slots.append(len(targets))
            targets.append((kind, serial, as_of))
        answers = self._lookup(targets, context)
        if answers is None:
            return None
        response = batch_response(
            [answers[slot] if isinstance(slot, int) else slot for slot in slots]
        )
        if not context.is_active():
            return None
        self._gate.provided(verifier, counts)
        return response

    def _entitlement(self, verifier: Verifier, kind: CertKind) -> Provision | str:
        """The provision a status of `kind` is, or why the verifier may not have it."""
        provision = status_provision(kind)
        try:
            self._gate.check(verifier, provision)
        except NotEntitled as exc:
            return f"PERMISSION_DENIED: {exc}"
        return provision

    def _lookup(
        self, targets: Sequence[Target], context: grpc.ServicerContext
    ) -> list[Brief] | None:
        """The answers for `targets`; None when the call ended before they were all read.

        A cancelled call or one past its deadline has nobody to read the rest, and its
        batch is never delivered, so nothing of it counts as provided.
        """
        source = self._source
        if not context.is_active():
            return None
        if isinstance(source, BriefSource):
            return source.briefs(targets)
        answers = []
        for kind, serial, as_of in targets:  # a source that answers one at a time
            if not context.is_active():
                return None
            answers.append(brief_of(source.status(kind, serial, as_of)))
        return answers

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


_WIRE_KINDS = {int(kind): kind for kind in CertKind}


def _plain_kind_serial(request: va_pb2.CheckRequest) -> tuple[CertKind, int]:
    """(kind, serial) of the usual batch item, a well-formed kind_serial for now, read
    with as little Python as can be; serial 0 for any other item (then read by
    `_target`, which also words the errors)."""
    ref = request.cert
    if ref.WhichOneof("ref") != "kind_serial" or request.HasField("as_of"):
        return CertKind.CARD_SIGN, 0
    pair = ref.kind_serial
    kind = _WIRE_KINDS.get(pair.kind)
    raw = pair.serial
    if kind is None or len(raw) > 20:
        return CertKind.CARD_SIGN, 0
    return kind, int.from_bytes(raw, "big")  # 0 also for an empty or zero serial


def kind_serial(ref: va_pb2.KindSerial) -> tuple[CertKind, int]:
    """(kind, serial) of a KindSerial; BadRequest when either is missing or malformed."""
    return kind_from_pb(ref.kind), serial_from_pb(ref.serial)


def kind_from_pb(value: int) -> CertKind:
    """A wire CertKind; every servicer's one way to read it (BadRequest if unusable)."""
    if value == va_pb2.CERT_KIND_UNSPECIFIED:
        raise BadRequest("certificate kind is required")
    try:
        return CertKind(value)
    except ValueError:
        raise BadRequest(f"unknown certificate kind {value}") from None


def serial_from_pb(raw: bytes) -> int:
    """A wire serial (unsigned big-endian, 1 to 20 octets, positive), or BadRequest."""
    try:
        return serial_from_bytes(raw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _as_is(data: bytes) -> bytes:
    return data


def add_status_service(servicer: StatusServicer, server: grpc.Server) -> None:
    """va_pb2_grpc.add_StatusServiceServicer_to_server, except that CheckStream's batches
    leave as the bytes the servicer wrote (server/batch_wire.py), not serialized again."""
    pb = va_pb2
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Check": grpc.unary_unary_rpc_method_handler(
            servicer.Check, pb.CheckRequest.FromString, pb.CheckResponse.SerializeToString
        ),
        "CheckStream": grpc.stream_stream_rpc_method_handler(
            servicer.CheckStream, pb.CheckBatchRequest.FromString, _as_is
        ),
        "Ocsp": grpc.unary_unary_rpc_method_handler(
            servicer.Ocsp, pb.OcspRequest.FromString, pb.OcspResponse.SerializeToString
        ),
        "ListIssuers": grpc.unary_unary_rpc_method_handler(
            servicer.ListIssuers,
            pb.ListIssuersRequest.FromString,
            pb.ListIssuersResponse.SerializeToString,
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["StatusService"]
    missing = {m.name for m in service.methods} - handlers.keys()
    if missing:  # va.proto gained a method: register it here too
        raise RuntimeError(f"StatusService methods without a handler: {sorted(missing)}")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
