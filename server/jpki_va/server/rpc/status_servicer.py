"""StatusService: translates between protobuf and the status source. Nothing else."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.clock import Clock
from jpki_va.core.domain import (
    KIND_BY_VALUE,
    CertKind,
    Provision,
    Verifier,
    micros,
    parse_record_key,
    record_key,
)
from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.access.gate import Caller, Gate
from jpki_va.server.law.entitlements import NotEntitled, status_provision
from jpki_va.server.responder.ocsp import OcspResponder
from jpki_va.server.responder.ocsp_access import GatedOcsp
from jpki_va.server.responder.status import (
    BadRequest,
    Brief,
    BriefSource,
    IndexHolder,
    PackedSource,
    Resolver,
    StatusSource,
    Target,
    brief_of,
    unknown_answer,
)
from jpki_va.server.rpc.batch_wire import (
    ItemError,
    PlainBatch,
    Slot,
    batch_request,
    batch_response,
    check_request,
    check_response,
    ocsp_response,
    packed_response,
)
from jpki_va.server.rpc.pb import (
    answer_to_pb,
    kind_serial,
    plain_kind_serial,
    serial_from_pb,
    time_from_pb,
    timestamp,
)


@dataclass(frozen=True)
class StreamLimits:
    max_batch: int = 10_000  # requests in one CheckStream batch
    max_batches: int = 100_000  # batches in one CheckStream


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
        self._packed = source if isinstance(source, PackedSource) else None

    def _target(
        self, request: bytes | va_pb2.CheckRequest, now: datetime | None = None
    ) -> tuple[CertKind | None, int, datetime]:
        """(kind, serial, as_of) the request names; kind None: an issuer we do not serve.

        `request` may be the record key a usual request was read as
        (`batch_wire.check_request`). `as_of` defaults to `now`, or the clock's time
        when `now` is None.
        """
        if isinstance(request, bytes):
            kind, serial = parse_record_key(request)
            return kind, serial, self._clock.now() if now is None else now
        if request.HasField("as_of"):
            as_of = time_from_pb(request.as_of)
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

    def Check(  # type: ignore[override]  # bytes: see add_status_service
        self, request: bytes | va_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> bytes:
        """A serialized CheckResponse. The usual request (a plain kind and serial, for
        now) arrives as its record key, read from its bytes (`batch_wire.check_request`),
        and is answered as a CheckStream item is: its index value read undecoded and
        written to the wire by compiled code, without a record, an Answer or a
        protobuf message; any other goes through `_target` and the status source."""
        gate = self._gate
        verifier = gate.identify(self._caller(context))
        key: bytes | None
        if isinstance(request, bytes):
            key, plain = request, KIND_BY_VALUE[request[0]]
        else:  # parsed: without the compiled reader, or not the usual request
            plain, serial = plain_kind_serial(request)
            key = record_key(plain, serial) if serial else None
        source = self._packed
        if key is not None and source is not None:
            provision = status_provision(plain)
            gate.check(verifier, provision)
            now = self._clock.now()  # one reading: the answer's instant and the count's day
            batch = source.packed([key], micros(now))
            if batch is not None:  # None: a layer must see the answer (a compromise)
                response, tally = check_response(batch)
                batch.answered(tally)
                gate.provided_one(verifier, provision, now)
                return response
        kind, serial, as_of = self._target(request)
        if kind is None:
            # Not an issuer we answer for: the certificate is unknown to us, and no
            # status information of the law is given (nothing to count).
            answer = unknown_answer(self._holder.get(), None, serial, as_of)
        else:
            provision = status_provision(kind)
            gate.check(verifier, provision)
            answer = self._source.status(kind, serial, as_of)
            gate.provided_one(verifier, provision)
        return va_pb2.CheckResponse(status=answer_to_pb(answer)).SerializeToString()

    def CheckStream(  # type: ignore[override]  # bytes: see add_status_service
        self,
        request_iterator: Iterator[PlainBatch | va_pb2.CheckBatchRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        """Yields each batch's CheckBatchResponse serialized (jpki_va.server.rpc.batch_wire).

        A batch comes as `batch_wire.batch_request` read it: the usual one as its
        record keys (`PlainBatch`), any other as the parsed message."""
        caller = self._caller(context)
        self._gate.identify(caller)  # refused before the first batch is read
        limits = self._limits
        for count, batch in enumerate(request_iterator, 1):
            if count > limits.max_batches:
                # A quota of the stream, not a fault of this batch: the caller opens a
                # new stream (which may land on another worker) and goes on.
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this stream has had its {limits.max_batches} batches; "
                    "open a new stream for more",
                )
            size = len(batch.keys if isinstance(batch, PlainBatch) else batch.requests)
            if not size:
                raise BadRequest("empty batch")
            if size > limits.max_batch:
                raise BadRequest(f"batch of {size} exceeds {limits.max_batch}")
            # A stream outlives registry changes: each batch goes to the verifier as
            # the registry has it now (one cheap check per batch).
            verifier = self._gate.identify(caller)
            if isinstance(batch, PlainBatch):
                response = self._plain_batch(verifier, batch, context)
                if response is None:  # per-item refusals, or answers a layer must see
                    response = self._batch(verifier, batch.parsed().requests, context)
            else:
                response = self._batch(verifier, batch.requests, context)
            if response is None:
                return
            yield response

    def _plain_batch(
        self, verifier: Verifier, batch: PlainBatch, context: grpc.ServicerContext
    ) -> bytes | None:
        """The usual batch, every item a plain kind_serial of a kind the verifier may
        have, answered without Python per item: its keys read from its bytes, its
        values encoded by compiled code (rpc/_batch_wire.pyx). None: a kind the
        verifier may not have, a layer that must see each answer, or the call ended;
        `_batch` then reads the parsed batch (and answers nothing if ended)."""
        source = self._packed
        if source is None:
            return None
        keys, per_kind = batch.keys, batch.per_kind
        counts: Counter[Provision] = Counter()
        for kind in CertKind:
            if per_kind[kind]:
                provision = self._entitlement(verifier, kind)
                if isinstance(provision, ItemError):
                    return None  # refusals between answers: `_batch` words them
                counts[provision] += per_kind[kind]
        if not context.is_active():
            return None
        values = source.packed(keys, micros(self._clock.now()))
        if values is None:
            return None
        response, tally = packed_response(None, values)
        values.answered(tally)
        if not context.is_active():
            return None
        self._gate.provided(verifier, counts)
        return response

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
        # Per kind: the provision it is, or the refusal when the verifier lacks it.
        entitled: dict[CertKind, Provision | ItemError] = {}
        # Per request: its answer, its refusal, or the position of its target.
        slots: list[Slot] = []
        targets: list[Target] = []
        counts: Counter[Provision] = Counter()
        in_order = True  # every slot is the next target's position
        for request in requests:
            kind, serial = plain_kind_serial(request)
            as_of = now
            if serial == 0:  # anything else: the general reading, and its errors
                try:
                    found, serial, as_of = self._target(request, now)
                except ValueError as exc:  # BadRequest included
                    slots.append(ItemError(va_pb2.CHECK_ERROR_CODE_INVALID_ARGUMENT, str(exc)))
                    in_order = False
                    continue
                if found is None:
                    # Not an issuer we answer for (see `Check`).
                    slots.append(brief_of(unknown_answer(self._holder.get(), None, serial, as_of)))
                    in_order = False
                    continue
                kind = found
            provision = entitled.get(kind)
            if provision is None:
                provision = entitled[kind] = self._entitlement(verifier, kind)
            if isinstance(provision, ItemError):
                slots.append(provision)
                in_order = False
                continue
            counts[provision] += 1
            slots.append(len(targets))
            targets.append((kind, serial, as_of))
        response = self._respond(None if in_order else slots, targets, now, context)
        if response is None or not context.is_active():
            return None
        self._gate.provided(verifier, counts)
        return response

    def _respond(
        self,
        slots: list[Slot] | None,
        targets: list[Target],
        now: datetime,
        context: grpc.ServicerContext,
    ) -> bytes | None:
        """The batch's wire bytes (`slots` None: one result per target, in order).

        The usual batch, one instant from a source that hands over index values, goes
        from those values to the wire in compiled code (rpc/batch_wire.py); any other
        goes through briefs. None: the call ended before the statuses were read.
        """
        if not context.is_active():
            return None
        source = self._packed
        if source is not None and all(as_of is now for _, _, as_of in targets):
            batch = source.packed(
                [record_key(kind, serial) for kind, serial, _ in targets], micros(now)
            )
            if batch is not None:
                response, tally = packed_response(slots, batch)
                batch.answered(tally)
                return response
        answers = self._lookup(targets, context)
        if answers is None:
            return None
        if slots is None:
            return batch_response(answers)
        return batch_response([answers[slot] if isinstance(slot, int) else slot for slot in slots])

    def _entitlement(self, verifier: Verifier, kind: CertKind) -> Provision | ItemError:
        """The provision a status of `kind` is, or why the verifier may not have it."""
        provision = status_provision(kind)
        try:
            self._gate.check(verifier, provision)
        except NotEntitled as exc:
            return ItemError(va_pb2.CHECK_ERROR_CODE_PERMISSION_DENIED, f"PERMISSION_DENIED: {exc}")
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

    def Ocsp(  # type: ignore[override]  # bytes: see add_status_service
        self, request: va_pb2.OcspRequest, context: grpc.ServicerContext
    ) -> bytes:
        """A serialized OcspResponse, written from the reply's parts (`batch_wire`)."""
        reply = self._ocsp.respond(self._caller(context), request.der)
        return ocsp_response(reply.body, reply.certs)

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


def add_status_service(servicer: StatusServicer, server: grpc.Server) -> None:
    """va_pb2_grpc.add_StatusServiceServicer_to_server, except that the answers of
    Check, CheckStream and Ocsp leave as the bytes the servicer wrote
    (jpki_va.server.rpc.batch_wire), not serialized again: their handlers have no
    response serializer, so grpc sends what they return. CheckStream's usual batch
    arrives as its record keys, read from its bytes (`batch_wire.batch_request`), and
    Check's usual request as its record key (`batch_wire.check_request`)."""
    pb = va_pb2
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Check": grpc.unary_unary_rpc_method_handler(servicer.Check, check_request),
        "CheckStream": grpc.stream_stream_rpc_method_handler(servicer.CheckStream, batch_request),
        "Ocsp": grpc.unary_unary_rpc_method_handler(servicer.Ocsp, pb.OcspRequest.FromString),
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
