"""MappingService: translates between protobuf and the Mapper. Nothing else."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from jpki_va.core.domain import CertKind
from jpki_va.protos import mapping_pb2, mapping_pb2_grpc, va_pb2
from jpki_va.server.access.gate import Caller, Gate
from jpki_va.server.responder.mappings import Mapper
from jpki_va.server.responder.status import BadRequest
from jpki_va.server.rpc.pb import answer_to_pb, kind_serial


class MappingServicer(mapping_pb2_grpc.MappingServiceServicer):
    def __init__(
        self, mapper: Mapper, gate: Gate, caller: Callable[[grpc.ServicerContext], Caller]
    ) -> None:
        self._mapper = mapper
        self._gate = gate
        self._caller = caller

    def Map(
        self, request: mapping_pb2.MapRequest, context: grpc.ServicerContext
    ) -> mapping_pb2.MapResponse:
        if not request.HasField("cert"):
            raise BadRequest("no certificate given (cert)")
        kind, serial = kind_serial(request.cert)
        to = None
        if request.to != va_pb2.CERT_KIND_UNSPECIFIED:
            try:
                to = CertKind(request.to)
            except ValueError:
                raise BadRequest(f"unknown certificate kind {request.to}") from None
        verifier = self._gate.identify(self._caller(context))
        answer = self._mapper.map(verifier, kind, serial, to)
        self._gate.provided(verifier, answer.counts, answer.disclosures)
        return mapping_pb2.MapResponse(
            certificates=[
                mapping_pb2.MappedCertificate(
                    type=int(m.type),  # type: ignore[arg-type]
                    status=answer_to_pb(m.answer),
                )
                for m in answer.certificates
            ],
            index_sequence=answer.sequence,
        )
