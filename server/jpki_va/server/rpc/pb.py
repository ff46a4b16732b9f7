"""Protobuf conversion, in one place: domain values to and from the generated messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from jpki_va.core.domain import (
    KIND_BY_VALUE,
    CertKind,
    Status,
    serial_from_bytes,
    serial_to_bytes,
)
from jpki_va.protos import va_pb2
from jpki_va.server.responder.status import (
    Answer,
    BadRequest,
    Brief,
)

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


def time_from_pb(stamp: Timestamp) -> datetime:
    """A time the caller sent (UTC), or BadRequest when it is no valid Timestamp."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except ValueError as exc:  # seconds or nanos out of Timestamp's range
        raise BadRequest(str(exc)) from None


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
    writes these bytes itself (jpki_va.server.rpc.batch_wire), checked against this."""
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


def plain_kind_serial(request: va_pb2.CheckRequest) -> tuple[CertKind, int]:
    """(kind, serial) of the usual batch item, a well-formed kind_serial for now, read
    with as little Python as can be; serial 0 for any other item (then read by
    `_target`, which also words the errors)."""
    ref = request.cert
    if ref.WhichOneof("ref") != "kind_serial" or request.HasField("as_of"):
        return CertKind.CARD_SIGN, 0
    pair = ref.kind_serial
    kind = KIND_BY_VALUE.get(pair.kind)
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
