"""Typed results of the client, converted from (and to) the protobuf messages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, TypeVar

from cryptography import x509
from cryptography.x509 import ocsp
from google.protobuf import timestamp_pb2

from jpki_va.client._errors import ProtocolError
from jpki_va.client._ocsp import DEFAULT_HASH, issuer_hashes, parse_certificate
from jpki_va.core.domain import (
    CertKind,
    CrlReason,
    LinkType,
    LossCause,
    Status,
    serial_from_bytes,
    serial_hex,
    serial_to_bytes,
)
from jpki_va.protos import crl_pb2, mapping_pb2, record_pb2, va_pb2

_E = TypeVar("_E", CertKind, LossCause, CrlReason, Status, LinkType)


@dataclass(frozen=True, slots=True)
class CertIdRef:
    """A certificate named as in RFC 6960: issuer name/key hashes and serial."""

    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    hash_algorithm: str = DEFAULT_HASH

    @classmethod
    def for_issuer(
        cls, issuer: x509.Certificate, serial: int, hash_algorithm: str = DEFAULT_HASH
    ) -> CertIdRef:
        name_hash, key_hash = issuer_hashes(issuer, hash_algorithm)
        return cls(name_hash, key_hash, serial, hash_algorithm)

    def to_proto(self) -> va_pb2.CertId:
        return va_pb2.CertId(
            hash_algorithm=self.hash_algorithm,
            issuer_name_hash=self.issuer_name_hash,
            issuer_key_hash=self.issuer_key_hash,
            serial=serial_to_bytes(self.serial),
        )


@dataclass(frozen=True, slots=True)
class Revocation:
    """When and why a certificate lost effect."""

    time: datetime
    cause: LossCause
    reason: CrlReason


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """The answer to one status query.

    ``kind`` is None only when the server could not tell the kind (an UNKNOWN answer
    about a CertID of an issuer it does not answer for).
    """

    kind: CertKind | None
    serial: int
    status: Status
    not_before: datetime | None
    not_after: datetime | None
    revocation: Revocation | None
    partition: str
    issuer_key_id: bytes
    as_of: datetime | None
    index_sequence: int

    @classmethod
    def from_proto(cls, msg: va_pb2.CertificateStatus) -> CertificateStatus:
        revocation = None
        if msg.HasField("revocation"):
            time = _time(msg.revocation, "time")
            if time is None:
                raise ProtocolError("revocation without a time")
            revocation = Revocation(
                time=time,
                cause=_enum(LossCause, msg.revocation.cause, "loss cause"),
                reason=_enum(CrlReason, msg.revocation.reason, "CRL reason"),
            )
        try:
            serial = serial_from_bytes(msg.serial)
        except ValueError as error:
            raise ProtocolError(f"bad serial in answer: {error}") from None
        return cls(
            kind=None
            if msg.kind == va_pb2.CERT_KIND_UNSPECIFIED
            else _enum(CertKind, msg.kind, "certificate kind"),
            serial=serial,
            status=_enum(Status, msg.status, "status"),
            not_before=_time(msg, "not_before"),
            not_after=_time(msg, "not_after"),
            revocation=revocation,
            partition=msg.partition,
            issuer_key_id=msg.issuer_key_id,
            as_of=_time(msg, "as_of"),
            index_sequence=msg.index_sequence,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: serial and key id as upper-case hex, times ISO 8601, enums by name."""
        return {
            "kind": None if self.kind is None else self.kind.name,
            "serial": serial_hex(self.serial),
            "status": self.status.name,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "revocation": None
            if self.revocation is None
            else {
                "time": _iso(self.revocation.time),
                "cause": self.revocation.cause.name,
                "reason": self.revocation.reason.name,
            },
            "partition": self.partition,
            "issuer_key_id": self.issuer_key_id.hex().upper(),
            "as_of": _iso(self.as_of),
            "index_sequence": self.index_sequence,
        }


class CheckErrorCode(IntEnum):
    """Why one item of a batch was refused (va.proto CheckErrorCode, same values)."""

    #: A responder older than the code, or a code newer than this client: read the text.
    UNSPECIFIED = 0
    #: The item is malformed (no certificate, a bad serial, an unparsable certificate).
    INVALID_ARGUMENT = 1
    #: The verifier may not receive the status of this kind of certificate.
    PERMISSION_DENIED = 2


@dataclass(frozen=True, slots=True)
class CheckRefusal:
    """One item of `VaClient.check_many` the responder refused; the rest were answered."""

    code: CheckErrorCode
    message: str

    @classmethod
    def from_proto(cls, msg: va_pb2.CheckResult) -> CheckRefusal:
        try:
            code = CheckErrorCode(msg.error_code)
        except ValueError:  # a code added after this client: the text still says why
            code = CheckErrorCode.UNSPECIFIED
        return cls(code=code, message=msg.error)


@dataclass(frozen=True, slots=True)
class IssuerInfo:
    """One issuing-CA generation (kind None: the root)."""

    kind: CertKind | None
    key_id: bytes
    certificate: x509.Certificate
    active: bool


@dataclass(frozen=True, slots=True)
class IssuerSet:
    """The root and the issuing-CA generations a responder answers for."""

    root: x509.Certificate | None
    issuers: tuple[IssuerInfo, ...]

    @classmethod
    def from_proto(cls, msg: va_pb2.ListIssuersResponse) -> IssuerSet:
        root = _certificate(msg.root_certificate_der) if msg.root_certificate_der else None
        issuers = tuple(
            IssuerInfo(
                kind=None
                if item.kind == va_pb2.CERT_KIND_UNSPECIFIED
                else _enum(CertKind, item.kind, "certificate kind"),
                key_id=item.key_id,
                certificate=_certificate(item.certificate_der),
                active=item.active,
            )
            for item in msg.issuers
        )
        return cls(root=root, issuers=issuers)

    def __iter__(self) -> Iterator[IssuerInfo]:
        return iter(self.issuers)

    def __len__(self) -> int:
        return len(self.issuers)

    def active_for(self, kind: CertKind) -> IssuerInfo | None:
        """The generation of `kind` that issues new certificates now."""
        return next((i for i in self.issuers if i.kind is kind and i.active), None)

    def find(self, key_id: bytes) -> IssuerInfo | None:
        return next((i for i in self.issuers if i.key_id == key_id), None)

    def for_certificate(self, certificate: x509.Certificate) -> IssuerInfo | None:
        """The issuer whose key id is the certificate's authority key identifier.

        Never by name: issuer generations share one distinguished name (DESIGN §8).
        """
        try:
            aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        except x509.ExtensionNotFound:
            return None
        key_id = aki.value.key_identifier
        return None if key_id is None else self.find(key_id)


@dataclass(frozen=True, slots=True)
class OcspResult:
    """An OCSP response as received (``der``) and parsed (``response``)."""

    der: bytes
    response: ocsp.OCSPResponse
    request_der: bytes


def _enum(cls: type[_E], value: int, what: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise ProtocolError(f"unknown {what} value {value} in answer") from None


def _time(msg: Any, field: str) -> datetime | None:
    # proto3 message fields have presence: an unset Timestamp means "no such time".
    if not msg.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(msg, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except ValueError as error:  # a Timestamp outside years 1 to 9999, or bad nanos
        raise ProtocolError(f"bad {field} in answer: {error}") from None


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _certificate(der: bytes) -> x509.Certificate:
    try:
        return parse_certificate(der)
    except ValueError as error:
        raise ProtocolError(f"unparsable certificate in answer: {error}") from None


@dataclass(frozen=True, slots=True)
class MappedCertificate:
    """One corresponding certificate and its current status (MappingService.Map)."""

    type: LinkType
    status: CertificateStatus

    @classmethod
    def from_proto(cls, msg: mapping_pb2.MappedCertificate) -> MappedCertificate:
        if not msg.HasField("status"):
            raise ProtocolError("mapped certificate without a status")
        return cls(
            type=_enum(LinkType, msg.type, "mapping type"),
            status=CertificateStatus.from_proto(msg.status),
        )

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type.name, **self.status.to_json()}


@dataclass(frozen=True, slots=True)
class SigningRecord:
    """特定署名用電子証明書記録情報: the serial and the holder's basic information."""

    kind: CertKind
    serial: int
    name: str
    address: str
    birth_date: str
    sex: str
    index_sequence: int

    @classmethod
    def from_proto(cls, msg: record_pb2.SigningRecord) -> SigningRecord:
        try:
            serial = serial_from_bytes(msg.serial)
        except ValueError as error:
            raise ProtocolError(f"bad serial in answer: {error}") from None
        return cls(
            kind=_enum(CertKind, msg.kind, "certificate kind"),
            serial=serial,
            name=msg.name,
            address=msg.address,
            birth_date=msg.birth_date,
            sex=msg.sex,
            index_sequence=msg.index_sequence,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.name,
            "serial": serial_hex(self.serial),
            "name": self.name,
            "address": self.address,
            "birth_date": self.birth_date,
            "sex": self.sex,
            "index_sequence": self.index_sequence,
        }


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    """One loss of effect from the feed, in registry order (``sequence``)."""

    sequence: int
    kind: CertKind
    serial: int
    cause: LossCause
    reason: CrlReason
    time: datetime
    recorded_at: datetime | None
    partition: str
    issuer_key_id: bytes

    @classmethod
    def from_proto(cls, msg: crl_pb2.RevocationEvent) -> RevocationEvent:
        time = _time(msg, "time")
        if time is None:
            raise ProtocolError("revocation event without a time")
        try:
            serial = serial_from_bytes(msg.serial)
        except ValueError as error:
            raise ProtocolError(f"bad serial in event: {error}") from None
        return cls(
            sequence=msg.sequence,
            kind=_enum(CertKind, msg.kind, "certificate kind"),
            serial=serial,
            cause=_enum(LossCause, msg.cause, "loss cause"),
            reason=_enum(CrlReason, msg.reason, "CRL reason"),
            time=time,
            recorded_at=_time(msg, "recorded_at"),
            partition=msg.partition,
            issuer_key_id=msg.issuer_key_id,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "loss",
            "sequence": self.sequence,
            "kind": self.kind.name,
            "serial": serial_hex(self.serial),
            "cause": self.cause.name,
            "reason": self.reason.name,
            "time": _iso(self.time),
            "recorded_at": _iso(self.recorded_at),
            "partition": self.partition,
            "issuer_key_id": self.issuer_key_id.hex().upper(),
        }


@dataclass(frozen=True, slots=True)
class IssuerCompromise:
    """An issuer generation's key compromise: all it signed lost effect at ``time``."""

    kind: CertKind
    issuer_key_id: bytes
    time: datetime

    @classmethod
    def from_proto(cls, msg: crl_pb2.IssuerCompromise) -> IssuerCompromise:
        time = _time(msg, "time")
        if time is None:
            raise ProtocolError("issuer compromise without a time")
        return cls(_enum(CertKind, msg.kind, "certificate kind"), msg.issuer_key_id, time)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "issuer-compromise",
            "kind": self.kind.name,
            "issuer_key_id": self.issuer_key_id.hex().upper(),
            "time": _iso(self.time),
        }


@dataclass(frozen=True, slots=True)
class RevocationUpdate:
    """One message of the feed. Resume a cut watch with ``since=through``."""

    events: tuple[RevocationEvent, ...]
    through: int
    compromises: tuple[IssuerCompromise, ...]

    @classmethod
    def from_proto(cls, msg: crl_pb2.WatchRevocationsResponse) -> RevocationUpdate:
        return cls(
            events=tuple(RevocationEvent.from_proto(e) for e in msg.events),
            through=msg.through,
            compromises=tuple(IssuerCompromise.from_proto(c) for c in msg.compromises),
        )


@dataclass(frozen=True, slots=True)
class CrlMeta:
    """A retained CRL as the responder describes it (CrlService)."""

    kind: CertKind
    partition: str
    issuer_key_id: bytes
    number: int
    this_update: datetime | None
    next_update: datetime | None
    size: int
    sha256: bytes
    current: bool

    @classmethod
    def from_proto(cls, msg: crl_pb2.CrlInfo) -> CrlMeta:
        return cls(
            kind=_enum(CertKind, msg.kind, "certificate kind"),
            partition=msg.partition,
            issuer_key_id=msg.issuer_key_id,
            number=msg.number,
            this_update=_time(msg, "this_update"),
            next_update=_time(msg, "next_update"),
            size=msg.size,
            sha256=msg.sha256,
            current=msg.current,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.name,
            "partition": self.partition,
            "issuer_key_id": self.issuer_key_id.hex().upper(),
            "number": self.number,
            "this_update": _iso(self.this_update),
            "next_update": _iso(self.next_update),
            "size": self.size,
            "sha256": self.sha256.hex(),
            "current": self.current,
        }


@dataclass(frozen=True, slots=True)
class AuthorityRevocationList:
    """The root's ARL: the issuing-CA certificates it revoked (第14条), as DER."""

    der: bytes
    number: int
    this_update: datetime | None
    next_update: datetime | None

    @classmethod
    def from_proto(cls, msg: crl_pb2.GetAuthorityRevocationListResponse) -> AuthorityRevocationList:
        try:
            crl = x509.load_der_x509_crl(msg.der)
        except ValueError as error:
            raise ProtocolError(f"the ARL received is not a DER CRL: {error}") from None
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            raise ProtocolError("the ARL received carries no CRL number") from None
        if number != msg.number:
            raise ProtocolError(f"the ARL is number {number}, but was announced as {msg.number}")
        return cls(
            der=msg.der,
            number=msg.number,
            this_update=_time(msg, "this_update"),
            next_update=_time(msg, "next_update"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "this_update": _iso(self.this_update),
            "next_update": _iso(self.next_update),
            "size": len(self.der),
        }
