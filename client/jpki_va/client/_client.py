"""VaClient: a synchronous, typed client of the verifier-facing gRPC API."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Generator, Iterable, Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from google.protobuf import timestamp_pb2

from jpki_va.client._errors import (
    ClientError,
    ProtocolError,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
    translating_rpc_errors,
)
from jpki_va.client._models import (
    AuthorityRevocationList,
    CertIdRef,
    CertificateStatus,
    CheckRefusal,
    CrlMeta,
    IssuerInfo,
    IssuerSet,
    MappedCertificate,
    OcspResult,
    RevocationUpdate,
    SigningRecord,
)
from jpki_va.client._ocsp import build_request, parse_certificate
from jpki_va.core.domain import CertKind, serial_from_bytes, serial_hex, serial_to_bytes
from jpki_va.core.loopback import VERIFIER_HEADER, is_loopback_target
from jpki_va.protos import (
    crl_pb2,
    crl_pb2_grpc,
    mapping_pb2,
    mapping_pb2_grpc,
    record_pb2,
    record_pb2_grpc,
    va_pb2,
    va_pb2_grpc,
)

DEFAULT_TIMEOUT = 5.0
# Requests per CheckStream batch: well under the responder's limit (10,000 by default).
BATCH_SIZE = 1000

#: A certificate as check_many takes it: (kind, serial), the certificate (object, DER or
#: PEM), or an RFC 6960 CertID.
CheckTarget = tuple[CertKind, int] | x509.Certificate | bytes | CertIdRef
# Reconnect pauses of a resuming watch: doubling from the first to the last.
RESUME_BACKOFF = (0.5, 8.0)


class VaClient:
    """Client of StatusService.

    TLS (or mTLS) is the norm: pass ``credentials`` from ``grpc.ssl_channel_credentials``.
    Plaintext needs ``insecure=True`` and a loopback target, because verifiers are
    identified by their client certificate and status answers must not be spoofable;
    there, ``verifier=`` names the (registered) verifier to act as.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        insecure: bool = False,
        verifier: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if credentials is not None and insecure:
            raise ValueError("pass either credentials or insecure=True, not both")
        if verifier is not None and not insecure:
            # With TLS the client certificate identifies the verifier; a header would not.
            raise ValueError(
                "verifier= is for insecure loopback demos; TLS identifies by certificate"
            )
        self._metadata: tuple[tuple[str, str | bytes], ...] = (
            () if verifier is None else ((VERIFIER_HEADER, verifier),)
        )
        if credentials is None:
            if not insecure:
                raise ValueError(
                    "refusing a plaintext channel: pass credentials, or insecure=True for loopback"
                )
            if not is_loopback_target(target):
                raise ValueError(f"plaintext is only allowed to a loopback address, not {target!r}")
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, credentials)
        self._stub = va_pb2_grpc.StatusServiceStub(self._channel)
        self._mapping = mapping_pb2_grpc.MappingServiceStub(self._channel)
        self._records = record_pb2_grpc.RecordServiceStub(self._channel)
        self._crls = crl_pb2_grpc.CrlServiceStub(self._channel)
        self.target = target
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def check(
        self,
        *,
        kind: CertKind | None = None,
        serial: int | None = None,
        certificate: x509.Certificate | bytes | None = None,
        cert_id: CertIdRef | None = None,
        as_of: datetime | None = None,
        timeout: float | None = None,
    ) -> CertificateStatus:
        """The status of one certificate, named by exactly one of: kind and serial,
        the certificate itself (object, DER or PEM), or an RFC 6960 CertID."""
        request = va_pb2.CheckRequest(cert=_cert_ref(kind, serial, certificate, cert_id))
        if as_of is not None:
            request.as_of.CopyFrom(_timestamp(as_of))
        with translating_rpc_errors():
            response = self._stub.Check(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        if not response.HasField("status"):
            raise ProtocolError("Check answered without a status")
        return CertificateStatus.from_proto(response.status)

    def check_many(
        self,
        certificates: Iterable[CheckTarget],
        *,
        as_of: datetime | None = None,
        batch_size: int = BATCH_SIZE,
        timeout: float | None = None,
    ) -> list[CertificateStatus | CheckRefusal]:
        """The statuses of many certificates over one CheckStream, in their order.

        An item the responder refuses (malformed, or a kind the verifier may not
        receive) is a CheckRefusal with its code, and the others are still answered;
        a refusal of the whole stream raises as `check` does. `timeout` bounds the
        whole stream.
        """
        if not 1 <= batch_size <= 10_000:
            raise ValueError(f"batch_size must be 1 to 10000, got {batch_size}")
        stamp = None if as_of is None else _timestamp(as_of)
        requests = []
        for target in certificates:
            request = va_pb2.CheckRequest(cert=_target_ref(target))
            if stamp is not None:
                request.as_of.CopyFrom(stamp)
            requests.append(request)
        batches = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
        if not batches:
            return []

        def sent() -> Iterator[va_pb2.CheckBatchRequest]:
            for batch in batches:
                yield va_pb2.CheckBatchRequest(requests=batch)

        out: list[CertificateStatus | CheckRefusal] = []
        with translating_rpc_errors():
            replies = self._stub.CheckStream(
                sent(), timeout=self._deadline(timeout), metadata=self._metadata
            )
            for count, reply in enumerate(replies):
                if count >= len(batches) or len(reply.results) != len(batches[count]):
                    raise ProtocolError("CheckStream answered a batch with the wrong count")
                out.extend(_result(result) for result in reply.results)
        if len(out) != len(requests):
            raise ProtocolError("CheckStream ended before answering every batch")
        return out

    def ocsp(self, request_der: bytes, *, timeout: float | None = None) -> bytes:
        """Send a DER OCSPRequest, return the DER OCSPResponse (also for error statuses)."""
        with translating_rpc_errors():
            response = self._stub.Ocsp(
                va_pb2.OcspRequest(der=request_der),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        return response.der

    def issuers(self, *, timeout: float | None = None) -> IssuerSet:
        """The root and every issuing-CA generation the responder answers for."""
        with translating_rpc_errors():
            response = self._stub.ListIssuers(
                va_pb2.ListIssuersRequest(),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        return IssuerSet.from_proto(response)

    def ocsp_for(
        self,
        *,
        certificate: x509.Certificate | bytes | None = None,
        issuer: x509.Certificate | IssuerInfo | None = None,
        kind: CertKind | None = None,
        serial: int | None = None,
        timeout: float | None = None,
    ) -> OcspResult:
        """Build an OCSP request (SHA-1 CertID) for a certificate, or for kind and serial,
        send it through StatusService.Ocsp and parse the answer.

        Without ``issuer`` the issuer comes from ``issuers()``: by the certificate's
        authority key identifier, or by the ``issuer_key_id`` that ``check`` reports for
        kind and serial. LookupError when the responder lists no such issuer.
        """
        issuer_cert = issuer.certificate if isinstance(issuer, IssuerInfo) else issuer
        if certificate is not None:
            if kind is not None or serial is not None:
                raise ValueError("name the certificate either by itself or by kind and serial")
            cert = _as_certificate(certificate)
            if issuer_cert is None:
                found = self.issuers(timeout=timeout).for_certificate(cert)
                if found is None:
                    raise LookupError(
                        "the responder lists no issuer whose key id matches the "
                        "certificate's authority key identifier"
                    )
                issuer_cert = found.certificate
            request_der = build_request(issuer=issuer_cert, certificate=cert)
        elif kind is not None and serial is not None:
            if issuer_cert is None:
                issuer_cert = self._issuer_of(kind, serial, timeout)
            request_der = build_request(issuer=issuer_cert, serial=serial)
        else:
            raise ValueError("ocsp_for needs certificate=, or kind= and serial=")
        der = self.ocsp(request_der, timeout=timeout)
        try:
            response = ocsp.load_der_ocsp_response(der)
        except ValueError as error:
            raise ProtocolError(f"Ocsp answered bytes that are no OCSPResponse: {error}") from None
        return OcspResult(der=der, response=response, request_der=request_der)

    def map(
        self,
        *,
        kind: CertKind,
        serial: int,
        to: CertKind | None = None,
        timeout: float | None = None,
    ) -> list[MappedCertificate]:
        """The holder's certificates corresponding to (kind, serial) whose validity period
        has not passed, each with its status (第18条4項・5項, 第37条3項).

        ``to`` picks one kind (the same kind as ``kind``: the certificates that renewed
        it); without it, every mapping this verifier may receive.
        """
        request = mapping_pb2.MapRequest(cert=_kind_serial(kind, serial))
        if to is not None:
            request.to = va_pb2.CertKind.ValueType(CertKind(to))
        with translating_rpc_errors():
            response = self._mapping.Map(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return [MappedCertificate.from_proto(m) for m in response.certificates]

    def signing_record(
        self, *, kind: CertKind, serial: int, timeout: float | None = None
    ) -> SigningRecord:
        """The signing record (第18条3項) of a signing certificate in effect whose holder
        consented to this verifier receiving it. FailedPrecondition says why not."""
        with translating_rpc_errors():
            response = self._records.GetSigningRecord(
                record_pb2.GetSigningRecordRequest(cert=_kind_serial(kind, serial)),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        if not response.HasField("record"):
            raise ProtocolError("GetSigningRecord answered without a record")
        return SigningRecord.from_proto(response.record)

    def watch(
        self,
        *,
        since: int = 0,
        kinds: Iterable[CertKind] = (),
        resume: bool = False,
        max_reconnects: int | None = None,
        timeout: float | None = None,
    ) -> Generator[RevocationUpdate, None, None]:
        """Loss-of-effect events after ``since``, then as they are published.

        Each update's ``through`` is where to resume (``since=through``) after a cut:
        nothing is missed and nothing repeated. With ``resume=True`` a cut stream
        (UNAVAILABLE, or RESOURCE_EXHAUSTED from a busy worker) reconnects by itself,
        pausing a little longer each time, up to ``max_reconnects`` times in a row
        (None: without end). ``timeout`` bounds each stream (None: none). Closing
        the generator cancels the call.
        """
        if since < 0:
            raise ValueError(f"since must not be negative, got {since}")
        wanted = [va_pb2.CertKind.ValueType(CertKind(k)) for k in kinds]
        pause, failures = RESUME_BACKOFF[0], 0
        while True:
            request = crl_pb2.WatchRevocationsRequest(since=since, kinds=wanted)
            call = self._crls.WatchRevocations(request, timeout=timeout, metadata=self._metadata)
            try:
                for message in call:
                    update = RevocationUpdate.from_proto(message)
                    if update.through < since:
                        raise ProtocolError(f"the feed went back from {since} to {update.through}")
                    since = update.through
                    pause, failures = RESUME_BACKOFF[0], 0
                    yield update
                return
            except grpc.RpcError as error:
                failure: ClientError = from_rpc_error(error)
                if not resume or not isinstance(failure, Unavailable | ResourceExhausted):
                    raise failure from error
                failures += 1
                if max_reconnects is not None and failures > max_reconnects:
                    raise failure from error
            finally:
                call.cancel()  # type: ignore[no-untyped-call]  # untyped in the grpc stubs
            time.sleep(pause)
            pause = min(pause * 2, RESUME_BACKOFF[1])

    def crls(
        self,
        *,
        kind: CertKind,
        partition: str = "",
        issuer_key_id: bytes = b"",
        timeout: float | None = None,
    ) -> list[CrlMeta]:
        """The retained CRLs of ``kind`` (optionally one partition or generation)."""
        request = crl_pb2.ListCrlsRequest(
            kind=va_pb2.CertKind.ValueType(CertKind(kind)),
            partition=partition,
            issuer_key_id=issuer_key_id,
        )
        with translating_rpc_errors():
            response = self._crls.ListCrls(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return [CrlMeta.from_proto(c) for c in response.crls]

    def crl(
        self,
        *,
        kind: CertKind,
        partition: str,
        issuer_key_id: bytes = b"",
        number: int | None = None,
        as_of: datetime | None = None,
        timeout: float | None = None,
    ) -> tuple[CrlMeta, bytes]:
        """The current CRL of a partition, or a retained one by number or in force at
        ``as_of``; the DER is checked against the SHA-256 the responder announced."""
        if number is not None and as_of is not None:
            raise ValueError("ask for a CRL by number or by time, not both")
        request = crl_pb2.GetCrlRequest(
            kind=va_pb2.CertKind.ValueType(CertKind(kind)),
            partition=partition,
            issuer_key_id=issuer_key_id,
        )
        if number is not None:
            request.number = number
        if as_of is not None:
            request.as_of.CopyFrom(_timestamp(as_of))
        meta: CrlMeta | None = None
        parts: list[bytes] = []
        with translating_rpc_errors():
            for chunk in self._crls.GetCrl(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            ):
                if meta is None and chunk.HasField("info"):
                    meta = CrlMeta.from_proto(chunk.info)
                parts.append(chunk.data)
        der = b"".join(parts)
        if meta is None:
            raise ProtocolError("GetCrl answered without describing the CRL")
        if hashlib.sha256(der).digest() != meta.sha256 or len(der) != meta.size:
            raise ProtocolError("the CRL received does not match its announced size and SHA-256")
        return meta, der

    def authority_revocation_list(
        self, *, root_key_id: bytes = b"", timeout: float | None = None
    ) -> AuthorityRevocationList:
        """The root's ARL (the issuing CAs revoked for key compromise, 第14条); of the
        served index's root, or of the root whose key id starts with ``root_key_id``."""
        request = crl_pb2.GetAuthorityRevocationListRequest(root_key_id=root_key_id)
        with translating_rpc_errors():
            response = self._crls.GetAuthorityRevocationList(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return AuthorityRevocationList.from_proto(response)

    def _issuer_of(self, kind: CertKind, serial: int, timeout: float | None) -> x509.Certificate:
        # Only the responder knows which generation issued a serial, and generations
        # share a DN, so ask for the key id and look that key up.
        key_id = self.check(kind=kind, serial=serial, timeout=timeout).issuer_key_id
        name = f"{kind.name} serial {serial_hex(serial)}"
        issuers = self.issuers(timeout=timeout)
        if not key_id:
            # A serial the responder does not know: ask the kind's active generation,
            # which answers "unknown" for it.
            active = issuers.active_for(kind)
            if active is None:
                raise LookupError(f"the responder knows no issuer of {name}")
            return active.certificate
        found = issuers.find(key_id)
        if found is None:
            raise LookupError(f"the responder lists no issuer with key id {key_id.hex()} ({name})")
        return found.certificate


def _cert_ref(
    kind: CertKind | None,
    serial: int | None,
    certificate: x509.Certificate | bytes | None,
    cert_id: CertIdRef | None,
) -> va_pb2.CertRef:
    by_serial = kind is not None or serial is not None
    if sum((by_serial, certificate is not None, cert_id is not None)) != 1:
        raise ValueError("name the certificate exactly one way: kind+serial, certificate, cert_id")
    if certificate is not None:
        return va_pb2.CertRef(certificate_der=_certificate_der(certificate))
    if cert_id is not None:
        _check_serial(cert_id.serial)
        return va_pb2.CertRef(cert_id=cert_id.to_proto())
    if kind is None or serial is None:
        raise ValueError("kind and serial go together")
    return va_pb2.CertRef(kind_serial=_kind_serial(kind, serial))


def _target_ref(target: CheckTarget) -> va_pb2.CertRef:
    if isinstance(target, tuple):
        kind, serial = target
        return _cert_ref(kind, serial, None, None)
    if isinstance(target, CertIdRef):
        return _cert_ref(None, None, None, target)
    return _cert_ref(None, None, target, None)


def _result(result: va_pb2.CheckResult) -> CertificateStatus | CheckRefusal:
    which = result.WhichOneof("result")
    if which == "status":
        return CertificateStatus.from_proto(result.status)
    if which == "error":
        return CheckRefusal.from_proto(result)
    raise ProtocolError("CheckStream answered an item with neither status nor error")


def _kind_serial(kind: CertKind, serial: int) -> va_pb2.KindSerial:
    _check_serial(serial)
    return va_pb2.KindSerial(
        kind=va_pb2.CertKind.ValueType(CertKind(kind)), serial=serial_to_bytes(serial)
    )


def _check_serial(serial: int) -> None:
    # Catch what the server would refuse anyway (RFC 5280: positive, at most 20 octets)
    # before spending a round trip.
    if serial <= 0:
        raise ValueError(f"serial must be positive, got {serial}")
    serial_from_bytes(serial_to_bytes(serial))


def _certificate_der(certificate: x509.Certificate | bytes) -> bytes:
    if isinstance(certificate, x509.Certificate):
        return certificate.public_bytes(serialization.Encoding.DER)
    if certificate.lstrip().startswith(b"-----BEGIN"):
        return parse_certificate(certificate).public_bytes(serialization.Encoding.DER)
    # DER is passed through unparsed: the server is the judge of what it accepts.
    return certificate


def _as_certificate(certificate: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(certificate, x509.Certificate):
        return certificate
    return parse_certificate(certificate)


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    if when.tzinfo is None or when.utcoffset() is None:
        # A naive time is ambiguous (UTC or JST?) for a legal status question.
        raise ValueError("as_of must be an aware datetime (with a time zone)")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp
