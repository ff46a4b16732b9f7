"""VerifierTokenService (responder): translates between protobuf and the token check."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from jpki_va.protos import verifiers_pb2, verifiers_pb2_grpc
from jpki_va.server.access.gate import Caller, Gate
from jpki_va.server.responder.token_check import TokenChecker
from jpki_va.server.rpc.pb import timestamp

MAX_TOKEN = 16 * 1024


class VerifierTokenServicer(verifiers_pb2_grpc.VerifierTokenServiceServicer):
    def __init__(
        self, checker: TokenChecker, gate: Gate, caller: Callable[[grpc.ServicerContext], Caller]
    ) -> None:
        self._checker = checker
        self._gate = gate
        self._caller = caller

    def CheckVerifierToken(
        self, request: verifiers_pb2.CheckVerifierTokenRequest, context: grpc.ServicerContext
    ) -> verifiers_pb2.CheckVerifierTokenResponse:
        self._gate.identify(self._caller(context))  # any registered verifier may ask
        if len(request.token) > MAX_TOKEN:
            return verifiers_pb2.CheckVerifierTokenResponse(
                valid=False, reason=f"token longer than {MAX_TOKEN} characters"
            )
        verdict = self._checker.check(request.token)
        out = verifiers_pb2.CheckVerifierTokenResponse(valid=verdict.valid, reason=verdict.reason)
        if verdict.token is not None:
            out.verifier_id = verdict.token.verifier_id
            out.roles.extend(int(r) for r in sorted(verdict.token.roles))  # type: ignore[misc]
            out.not_after.CopyFrom(timestamp(verdict.token.not_after))
        return out
