"""CrlService: translates between protobuf and the CRL files. Nothing else."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import grpc

from jpki_va.core.domain import CertKind, serial_to_bytes
from jpki_va.protos import crl_pb2, crl_pb2_grpc, va_pb2
from jpki_va.server.access.gate import Caller, Gate
from jpki_va.server.law.entitlements import NotEntitled, check_entitled, crl_provision
from jpki_va.server.law.issuer_compromise import Compromise
from jpki_va.server.model.registry_values import LossEvent
from jpki_va.server.responder.ca_files import CaFiles
from jpki_va.server.responder.crl_archive import CrlNotFound
from jpki_va.server.responder.crls import CrlFile, CrlFiles
from jpki_va.server.responder.revocation_feed import RevocationFeed
from jpki_va.server.rpc.pb import kind_from_pb, time_from_pb, timestamp

CHUNK = 64 * 1024


def crl_info_to_pb(crl: CrlFile) -> crl_pb2.CrlInfo:
    info = crl.info
    return crl_pb2.CrlInfo(
        kind=int(info.kind),  # type: ignore[arg-type]
        partition=info.partition,
        issuer_key_id=info.issuer_key_id,
        number=info.number,
        this_update=timestamp(info.this_update),
        next_update=timestamp(info.next_update),
        size=info.size,
        sha256=info.sha256,
        current=crl.current,
    )


def event_to_pb(event: LossEvent) -> crl_pb2.RevocationEvent:
    return crl_pb2.RevocationEvent(
        sequence=event.sequence,
        kind=int(event.kind),  # type: ignore[arg-type]
        serial=serial_to_bytes(event.serial),
        cause=int(event.loss.cause),  # type: ignore[arg-type]
        reason=int(event.loss.reason),  # type: ignore[arg-type]
        time=timestamp(event.loss.time),
        recorded_at=timestamp(event.recorded_at),
        partition=event.partition,
        issuer_key_id=event.issuer_key_id,
    )


def compromise_to_pb(compromise: Compromise) -> crl_pb2.IssuerCompromise:
    return crl_pb2.IssuerCompromise(
        kind=int(compromise.kind),  # type: ignore[arg-type]
        issuer_key_id=compromise.key_id,
        time=timestamp(compromise.time),
    )


class CrlServicer(crl_pb2_grpc.CrlServiceServicer):
    def __init__(
        self,
        files: CrlFiles,
        gate: Gate,
        caller: Callable[[grpc.ServicerContext], Caller],
        feed: RevocationFeed,
        ca: CaFiles,
    ) -> None:
        self._files = files
        self._ca = ca
        self._gate = gate
        self._caller = caller
        self._feed = feed

    def GetCrl(
        self, request: crl_pb2.GetCrlRequest, context: grpc.ServicerContext
    ) -> Iterator[crl_pb2.CrlChunk]:
        kind = kind_from_pb(request.kind)
        provision = crl_provision(kind)
        verifier = self._gate.admit(self._caller(context), provision)
        which = request.WhichOneof("which")
        crl, der = self._files.get(
            kind,
            request.partition,
            request.issuer_key_id or None,
            number=request.number if which == "number" else None,
            as_of=time_from_pb(request.as_of) if which == "as_of" else None,
        )
        # Counted before the first chunk leaves (第41条).
        self._gate.provided(verifier, Counter({provision: 1}))
        yield crl_pb2.CrlChunk(info=crl_info_to_pb(crl), data=der[:CHUNK])
        for offset in range(CHUNK, len(der), CHUNK):
            yield crl_pb2.CrlChunk(data=der[offset : offset + CHUNK])

    def GetAuthorityRevocationList(
        self, request: crl_pb2.GetAuthorityRevocationListRequest, context: grpc.ServicerContext
    ) -> crl_pb2.GetAuthorityRevocationListResponse:
        self._gate.identify(self._caller(context))  # public, but only to verifiers
        found = self._ca.arl(request.root_key_id)
        if found is None:
            raise CrlNotFound(f"no ARL of root {request.root_key_id.hex() or '(any)'}")
        return crl_pb2.GetAuthorityRevocationListResponse(
            der=found.der,
            number=found.number or 0,
            this_update=timestamp(found.this_update),
            next_update=timestamp(found.next_update),
        )

    def ListCrls(
        self, request: crl_pb2.ListCrlsRequest, context: grpc.ServicerContext
    ) -> crl_pb2.ListCrlsResponse:
        verifier = self._gate.identify(self._caller(context))
        if request.kind != va_pb2.CERT_KIND_UNSPECIFIED:
            kind = kind_from_pb(request.kind)
            check_entitled(verifier, crl_provision(kind))
            kinds = [kind]
        else:
            kinds = []
            for kind in CertKind:
                try:
                    check_entitled(verifier, crl_provision(kind))
                except NotEntitled:
                    continue
                kinds.append(kind)
            if not kinds:
                # Name what is missing, as any refusal does.
                check_entitled(verifier, crl_provision(CertKind.CARD_SIGN))
        files = self._files.list(kinds, request.partition or None, request.issuer_key_id or None)
        return crl_pb2.ListCrlsResponse(crls=[crl_info_to_pb(f) for f in files])

    def WatchRevocations(
        self, request: crl_pb2.WatchRevocationsRequest, context: grpc.ServicerContext
    ) -> Iterator[crl_pb2.WatchRevocationsResponse]:
        caller = self._caller(context)
        verifier = self._gate.identify(caller)
        kinds = [kind_from_pb(k) for k in request.kinds]
        done = threading.Event()
        context.add_callback(done.set)  # cancelled, past its deadline, or ended
        # The feed identifies the watcher again before every batch (registry changes).
        who = functools.partial(self._gate.identify, caller)
        for batch in self._feed.watch(who, request.since, kinds, done):
            # Counted before the batch leaves (第41条): each event is status information.
            self._gate.provided(verifier, batch.counts)
            yield crl_pb2.WatchRevocationsResponse(
                events=[event_to_pb(e) for e in batch.events],
                through=batch.through,
                compromises=[compromise_to_pb(c) for c in batch.compromises],
            )
