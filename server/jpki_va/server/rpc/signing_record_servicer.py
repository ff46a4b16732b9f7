"""RecordService: translates between protobuf and the signing records. Nothing else."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from jpki_va.core.domain import Provision, serial_to_bytes
from jpki_va.protos import record_pb2, record_pb2_grpc
from jpki_va.server.access.gate import Caller, Gate
from jpki_va.server.responder.signing_record_lookup import SigningRecords
from jpki_va.server.responder.status import BadRequest
from jpki_va.server.rpc.pb import kind_serial


class RecordServicer(record_pb2_grpc.RecordServiceServicer):
    def __init__(
        self, records: SigningRecords, gate: Gate, caller: Callable[[grpc.ServicerContext], Caller]
    ) -> None:
        self._records = records
        self._gate = gate
        self._caller = caller

    def GetSigningRecord(
        self, request: record_pb2.GetSigningRecordRequest, context: grpc.ServicerContext
    ) -> record_pb2.GetSigningRecordResponse:
        if not request.HasField("cert"):
            raise BadRequest("no certificate given (cert)")
        kind, serial = kind_serial(request.cert)
        # The audit entry is durable before this returns (Gate.provide, Ledger.record).
        record, sequence = self._gate.provide(
            self._caller(context),
            Provision.SIGNING_RECORD,
            lambda verifier: self._records.get(verifier, kind, serial),
            lambda verifier, found: [self._records.disclosure(verifier, found[0])],
        )
        return record_pb2.GetSigningRecordResponse(
            record=record_pb2.SigningRecord(
                kind=int(record.kind),  # type: ignore[arg-type]
                serial=serial_to_bytes(record.serial),
                name=record.name,
                address=record.address,
                birth_date=record.birth_date,
                sex=record.sex,
                index_sequence=sequence,
            )
        )
