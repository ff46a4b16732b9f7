"""The registry's binary values: certificate records, holders, public keys, loss events."""

from __future__ import annotations

import json
import struct
from typing import NamedTuple

from jpki_va.core.domain import (
    CertKind,
    CrlReason,
    Loss,
    LossCause,
    from_micros,
    micros,
)
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import (
    CertificateRecord,
    LossEvent,
    LossTrigger,
)

# binary values --------------------------------------------------------------------------
# Times are integer microseconds since the epoch (UTC), so every stored time reads back
# exactly. Serials take 20 octets (RFC 5280 §4.1.2.2), like record keys.
VALUE_FORMAT = 1  # the first byte of every binary value; JSON values start with `{`


_LEGACY = frozenset(b"{[")


_CARD_SERIAL = 1  # flag: the record has a card serial


RECORD_KEY_SIZE = 21  # domain.record_key


# format, kind, serial, not_before, not_after, flags, loss time, cause, reason,
# card serial, trigger kind, trigger serial, trigger cause, then the lengths of the
# variable fields: issuer key id, partition, resident code, name, address, birth
# date, sex, certificate DER (in that order after the header).
_CERT = struct.Struct("<BB20sqqBqBB20sB20sBBBHHHHHI")


CERT_HEADER_SIZE = _CERT.size


# The part of that header a full publish reads (the trigger skipped, two lengths kept).
_HEAD = struct.Struct("<BB20sqqBqBB20s22xBB")


# format, kind, serial, time, cause, reason, recorded at, trigger kind, trigger
# serial, trigger cause, then the lengths of the issuer key id and the partition.
_EVENT = struct.Struct("<BB20sqBBqB20sBBB")


def _serial(value: int) -> bytes:
    return value.to_bytes(20, "big")


def encode_certificate_value(
    *,
    kind: int,
    serial: int,
    issuer_key_id: bytes,
    partition: bytes,
    not_before: int,
    not_after: int,
    resident_code: bytes,
    name: bytes,
    address: bytes,
    birth_date: bytes,
    sex: bytes,
    certificate_der: bytes = b"",
    loss_time: int = 0,
    cause: int = 0,
    reason: int = 0,
    card_serial: int | None = None,
    trigger_kind: int = 0,
    trigger_serial: int = 0,
    trigger_cause: int = 0,
) -> bytes:
    """A certificate record's stored value, from primitives (times in microseconds).

    Text fields are UTF-8; `cause` 0 means no loss, `trigger_kind` 0 no trigger.
    Bulk writers call this directly; `CertificateRecord` goes through it too.
    """
    try:
        header = _CERT.pack(
            VALUE_FORMAT,
            kind,
            _serial(serial),
            not_before,
            not_after,
            0 if card_serial is None else _CARD_SERIAL,
            loss_time,
            cause,
            reason,
            _serial(card_serial or 0),
            trigger_kind,
            _serial(trigger_serial),
            trigger_cause,
            len(issuer_key_id),
            len(partition),
            len(resident_code),
            len(name),
            len(address),
            len(birth_date),
            len(sex),
            len(certificate_der),
        )
    except struct.error as exc:
        raise ValueError(f"certificate record does not fit the registry format: {exc}") from None
    fields = (issuer_key_id, partition, resident_code, name, address, birth_date, sex)
    return b"".join((header, *fields, certificate_der))


class CertificateHead(NamedTuple):
    """What a full publish needs of one record, read from the fixed header only.

    Times in microseconds; `cause` 0: no loss recorded (issuer compromises not applied).
    """

    kind: int
    serial: int
    issuer_key_id: bytes
    partition: bytes
    not_before: int
    not_after: int
    loss_time: int
    cause: int
    reason: int
    card_serial: int | None

    @classmethod
    def of(cls, record: CertificateRecord) -> CertificateHead:
        loss = record.loss
        return cls(
            record.kind,
            record.serial,
            record.issuer_key_id,
            record.partition.encode(),
            micros(record.not_before),
            micros(record.not_after),
            0 if loss is None else micros(loss.time),
            0 if loss is None else int(loss.cause),
            0 if loss is None else int(loss.reason),
            record.card_serial,
        )


def certificate_head(value: bytes | memoryview) -> CertificateHead:
    """The header of a stored certificate value (legacy JSON is decoded in full)."""
    if value[0] in _LEGACY:
        return CertificateHead.of(decode_certificate(value))
    fmt, kind, serial, nb, na, flags, lost, cause, reason, card, kid_len, part_len = (
        _HEAD.unpack_from(value)
    )
    if fmt != VALUE_FORMAT:
        raise ValueError(f"unknown certificate value format {fmt}")
    end = CERT_HEADER_SIZE + kid_len
    return CertificateHead(
        kind,
        int.from_bytes(serial, "big"),
        bytes(value[CERT_HEADER_SIZE:end]),
        bytes(value[end : end + part_len]),
        nb,
        na,
        lost,
        cause,
        reason,
        int.from_bytes(card, "big") if flags & _CARD_SERIAL else None,
    )


# The part of the header a full publish's links pass reads (the card serial follows).
_LINK_HEAD = struct.Struct("<BB20sqqBqB")
_CARD_AT = _LINK_HEAD.size + 1  # after the reason octet


LinkHead = tuple[int, int, int, int, int | None, int | None]


def link_head(value: bytes | memoryview) -> LinkHead:
    """(kind, serial, not before, not after, loss time or None, card serial or None) of a
    stored value, as `certificate_head` reads them, with no other field decoded."""
    if value[0] in _LEGACY:
        return link_head_of(certificate_head(value))
    fmt, kind, serial, nb, na, flags, lost, cause = _LINK_HEAD.unpack_from(value)
    if fmt != VALUE_FORMAT:
        raise ValueError(f"unknown certificate value format {fmt}")
    card = int.from_bytes(value[_CARD_AT : _CARD_AT + 20], "big") if flags & _CARD_SERIAL else None
    return kind, int.from_bytes(serial, "big"), nb, na, lost if cause else None, card


def link_head_of(head: CertificateHead) -> LinkHead:
    """`link_head` of a header already read (or made from a record)."""
    lost = head.loss_time if head.cause else None
    return head.kind, head.serial, head.not_before, head.not_after, lost, head.card_serial


def encode_certificate(record: CertificateRecord) -> bytes:
    loss, trigger, holder = record.loss, record.loss_trigger, record.holder
    return encode_certificate_value(
        kind=record.kind,
        serial=record.serial,
        issuer_key_id=record.issuer_key_id,
        partition=record.partition.encode(),
        not_before=micros(record.not_before),
        not_after=micros(record.not_after),
        resident_code=record.resident_code.encode(),
        name=holder.name.encode(),
        address=holder.address.encode(),
        birth_date=holder.birth_date.encode(),
        sex=holder.sex.encode(),
        certificate_der=record.certificate_der,
        loss_time=0 if loss is None else micros(loss.time),
        cause=0 if loss is None else loss.cause,
        reason=0 if loss is None else loss.reason,
        card_serial=record.card_serial,
        trigger_kind=0 if trigger is None else trigger.kind,
        trigger_serial=0 if trigger is None else trigger.serial,
        trigger_cause=0 if trigger is None else trigger.cause,
    )


def decode_certificate(value: bytes | memoryview) -> CertificateRecord:
    if value[0] in _LEGACY:
        return CertificateRecord.from_json(json.loads(bytes(value)))
    fields = _CERT.unpack_from(value)
    (fmt, kind, serial, nb, na, flags, lost, cause, reason, card, t_kind, t_serial, t_cause) = (
        fields[:13]
    )
    if fmt != VALUE_FORMAT:
        raise ValueError(f"unknown certificate value format {fmt}")
    texts = []
    offset = CERT_HEADER_SIZE
    for length in fields[13:]:
        texts.append(bytes(value[offset : offset + length]))
        offset += length
    kid, partition, code, name, address, birth, sex, der = texts
    return CertificateRecord(
        kind=CertKind(kind),
        serial=int.from_bytes(serial, "big"),
        issuer_key_id=kid,
        resident_code=code.decode(),
        partition=partition.decode(),
        holder=Holder(
            name=name.decode(),
            address=address.decode(),
            birth_date=birth.decode(),
            sex=sex.decode(),
        ),
        not_before=from_micros(nb),
        not_after=from_micros(na),
        certificate_der=der,
        loss=None if cause == 0 else Loss(from_micros(lost), LossCause(cause), CrlReason(reason)),
        card_serial=int.from_bytes(card, "big") if flags & _CARD_SERIAL else None,
        loss_trigger=None
        if t_kind == 0
        else LossTrigger(CertKind(t_kind), int.from_bytes(t_serial, "big"), LossCause(t_cause)),
    )


def encode_holder_value(keys: list[bytes]) -> bytes:
    """A holder's certificates: their 21-octet record keys, in issuance order."""
    return bytes([VALUE_FORMAT]) + b"".join(keys)


def holder_keys(value: bytes | memoryview) -> list[bytes]:
    if value[0] in _LEGACY:
        return [bytes.fromhex(k) for k in json.loads(bytes(value))["certs"]]
    if value[0] != VALUE_FORMAT or (len(value) - 1) % RECORD_KEY_SIZE:
        raise ValueError("malformed holder value")
    return [bytes(value[i : i + RECORD_KEY_SIZE]) for i in range(1, len(value), RECORD_KEY_SIZE)]


def certificate_der(value: bytes | memoryview) -> bytes:
    """The certificate body of a stored record (empty when it has none), header only read."""
    if value[0] in _LEGACY:
        return decode_certificate(value).certificate_der
    fields = _CERT.unpack_from(value)
    if fields[0] != VALUE_FORMAT:
        raise ValueError(f"unknown certificate value format {fields[0]}")
    size = fields[-1]
    if not size:
        return b""
    end = CERT_HEADER_SIZE + sum(fields[13:])
    return bytes(value[end - size : end])


def encode_key_value(keys: list[bytes]) -> bytes:
    """The certificates of one public key: their 21-octet record keys, in issuance order."""
    return bytes([VALUE_FORMAT]) + b"".join(keys)


def key_record_keys(value: bytes | memoryview) -> list[bytes]:
    if not value or value[0] != VALUE_FORMAT or (len(value) - 1) % RECORD_KEY_SIZE:
        raise ValueError("malformed public key value")
    return [bytes(value[i : i + RECORD_KEY_SIZE]) for i in range(1, len(value), RECORD_KEY_SIZE)]


def encode_event_value(
    *,
    kind: int,
    serial: int,
    partition: bytes,
    issuer_key_id: bytes,
    time: int,
    cause: int,
    reason: int,
    recorded_at: int,
    trigger_kind: int = 0,
    trigger_serial: int = 0,
    trigger_cause: int = 0,
) -> bytes:
    """A loss event's stored value, from primitives (times in microseconds)."""
    return (
        _EVENT.pack(
            VALUE_FORMAT,
            kind,
            _serial(serial),
            time,
            cause,
            reason,
            recorded_at,
            trigger_kind,
            _serial(trigger_serial),
            trigger_cause,
            len(issuer_key_id),
            len(partition),
        )
        + issuer_key_id
        + partition
    )


def encode_event(event: LossEvent) -> bytes:
    trigger = event.trigger
    return encode_event_value(
        kind=event.kind,
        serial=event.serial,
        partition=event.partition.encode(),
        issuer_key_id=event.issuer_key_id,
        time=micros(event.loss.time),
        cause=event.loss.cause,
        reason=event.loss.reason,
        recorded_at=micros(event.recorded_at),
        trigger_kind=0 if trigger is None else trigger.kind,
        trigger_serial=0 if trigger is None else trigger.serial,
        trigger_cause=0 if trigger is None else trigger.cause,
    )


def decode_event(sequence: int, value: bytes | memoryview) -> LossEvent:
    if value[0] in _LEGACY:
        return LossEvent.from_json(sequence, json.loads(bytes(value)))
    (fmt, kind, serial, lost, cause, reason, recorded, t_kind, t_serial, t_cause, kid_len, _) = (
        _EVENT.unpack_from(value)
    )
    if fmt != VALUE_FORMAT:
        raise ValueError(f"unknown loss event format {fmt}")
    end = _EVENT.size + kid_len
    return LossEvent(
        sequence=sequence,
        kind=CertKind(kind),
        serial=int.from_bytes(serial, "big"),
        partition=bytes(value[end:]).decode(),
        issuer_key_id=bytes(value[_EVENT.size : end]),
        loss=Loss(from_micros(lost), LossCause(cause), CrlReason(reason)),
        recorded_at=from_micros(recorded),
        trigger=None
        if t_kind == 0
        else LossTrigger(CertKind(t_kind), int.from_bytes(t_serial, "big"), LossCause(t_cause)),
    )
