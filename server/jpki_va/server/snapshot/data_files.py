"""The data files of a snapshot besides records and CRLs (format: snapshot.manifest).

One function pair per file, so the publisher and the index builder agree on the
format by construction. Decoders raise ValueError on anything malformed.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from jpki_va.core.domain import (
    CertKind,
    CrlReason,
    Link,
    LinkType,
    Loss,
    LossCause,
    from_micros,
    micros,
    parse_record_key,
    record_key,
    serial_from_hex,
    serial_hex,
)
from jpki_va.server.model.registry_values import CertificateRecord, LossEvent, LossTrigger


@dataclass(frozen=True)
class SigningRecord:
    """特定署名用電子証明書記録情報: a signing certificate's serial and the holder's facts."""

    kind: CertKind
    serial: int
    name: str
    address: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class ConsentLine:
    kind: CertKind
    serial: int
    verifier: str
    granted: bool


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path.name} line {number}: {exc}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path.name} line {number}: not an object")
            yield data


# events -----------------------------------------------------------------------------------
# events.bin: a header line, then fixed-width rows in strictly increasing sequence:
# sequence, record key, partition (municipality code as an integer), issuer key id,
# loss time and registry commit time (microseconds since the epoch, UTC), cause,
# reason, then the trigger's record key and cause for a cascaded loss (all zero when
# none). The index stores each row as is under its sequence.
EVENTS_MAGIC = b"JPKIVA-EVENTS/1\n"
_EVENT_ROW = struct.Struct("<Q21sI20sqqBB21sB")
EVENT_ROW_SIZE = _EVENT_ROW.size
_KEY_ID_SIZE = 20  # RFC 5280 method 1: SHA-1 of the public key
_NO_TRIGGER = bytes(21)
_MAX_PARTITION = 999_999
_CAUSES = frozenset(int(c) for c in LossCause)
_REASONS = frozenset(int(r) for r in CrlReason)
_KINDS = frozenset(int(k) for k in CertKind)


def _micros(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    return micros(when)


def _from_micros(value: int) -> datetime:
    try:
        return from_micros(value)
    except OverflowError:
        raise ValueError(f"event time {value} out of range") from None


def event_row(event: LossEvent) -> bytes:
    """The fixed-width row of one loss event."""
    if len(event.issuer_key_id) != _KEY_ID_SIZE:
        raise ValueError("an issuer key id has 20 bytes")
    partition = event.partition
    if len(partition) != 6 or not (partition.isascii() and partition.isdigit()):
        raise ValueError(f"municipality code must be six digits, got {partition!r}")
    trigger = event.trigger
    try:
        return _EVENT_ROW.pack(
            event.sequence,
            record_key(event.kind, event.serial),
            int(partition),
            event.issuer_key_id,
            _micros(event.loss.time),
            _micros(event.recorded_at),
            event.loss.cause,
            event.loss.reason,
            _NO_TRIGGER if trigger is None else record_key(trigger.kind, trigger.serial),
            0 if trigger is None else trigger.cause,
        )
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"event {event.sequence} does not fit its row: {exc}") from None


_MIN_MICROS = _micros(datetime.min.replace(tzinfo=UTC)) + 86_400_000_000
_MAX_MICROS = _micros(datetime.max.replace(tzinfo=UTC)) - 86_400_000_000
EventFields = tuple[int, bytes, int, bytes, int, int, int, int, bytes, int]


def _checked(fields: EventFields) -> EventFields:
    """The fields of a row when every one is in its domain, else ValueError."""
    sequence, key, partition, _, time, recorded_at, cause, reason, trigger, trigger_cause = fields
    if sequence == 0:
        raise ValueError("event sequence 0")
    if key[0] not in _KINDS:
        raise ValueError(f"event {sequence}: unknown certificate kind {key[0]}")
    if partition > _MAX_PARTITION:
        raise ValueError(f"event {sequence}: partition {partition} is not a municipality code")
    if not (_MIN_MICROS <= time <= _MAX_MICROS and _MIN_MICROS <= recorded_at <= _MAX_MICROS):
        raise ValueError(f"event {sequence}: time out of range")
    if cause not in _CAUSES or reason not in _REASONS:
        raise ValueError(f"event {sequence}: unknown cause {cause} or reason {reason}")
    if trigger == _NO_TRIGGER:
        if trigger_cause != 0:
            raise ValueError(f"event {sequence}: trigger cause without a trigger")
    elif trigger[0] not in _KINDS or trigger_cause not in _CAUSES:
        raise ValueError(f"event {sequence}: malformed trigger")
    return fields


def parse_event_row(row: bytes | memoryview) -> LossEvent:
    """The loss event a row states; ValueError on any field out of its domain."""
    try:
        fields: EventFields = _EVENT_ROW.unpack(row)
    except struct.error as exc:
        raise ValueError(f"malformed event row: {exc}") from None
    sequence, key, partition, kid, time, recorded_at, cause, reason, trigger, trigger_cause = (
        _checked(fields)
    )
    kind, serial = parse_record_key(key)
    return LossEvent(
        sequence=sequence,
        kind=kind,
        serial=serial,
        partition=f"{partition:06d}",
        issuer_key_id=kid,
        loss=Loss(_from_micros(time), LossCause(cause), CrlReason(reason)),
        recorded_at=_from_micros(recorded_at),
        trigger=None
        if trigger == _NO_TRIGGER
        else LossTrigger(*parse_record_key(trigger), LossCause(trigger_cause)),
    )


def write_event_rows(out: BinaryIO, events: Iterable[LossEvent]) -> int:
    """Write the events file (events in increasing sequence); returns how many."""
    out.write(EVENTS_MAGIC)
    count = 0
    previous = 0
    for event in events:
        if event.sequence <= previous:
            raise ValueError("events must be written in strictly increasing sequence")
        previous = event.sequence
        out.write(event_row(event))
        count += 1
    return count


def read_event_rows(data: memoryview | bytes) -> Iterator[tuple[bytes, EventFields]]:
    """Every row of an events file with its fields, each field checked, in sequence."""
    if bytes(data[: len(EVENTS_MAGIC)]) != EVENTS_MAGIC:
        raise ValueError("not a jpki-va events file")
    body = bytes(data[len(EVENTS_MAGIC) :])
    if len(body) % EVENT_ROW_SIZE:
        raise ValueError("events file is truncated")
    previous = 0
    offset = 0
    for fields in _EVENT_ROW.iter_unpack(body):
        sequence = _checked(fields)[0]
        if sequence <= previous:
            raise ValueError(f"event {sequence} out of sequence order")
        previous = sequence
        yield body[offset : offset + EVENT_ROW_SIZE], fields
        offset += EVENT_ROW_SIZE


# links ------------------------------------------------------------------------------------
# links.bin: a header line, then fixed-width rows (from key, to key, LinkType, direction)
# strictly increasing by (from, to). Every link is written twice, once from each end
# (direction 0: `from` is the link's a side), so the index appends the rows as they come.
LINKS_MAGIC = b"JPKIVA-LINKS/1\n"
_LINK_ROW = struct.Struct("<21s21sBB")
LINK_ROW_SIZE = _LINK_ROW.size
LINK_KEY_SIZE = 42


def link_rows(link: Link) -> tuple[bytes, bytes]:
    """The two rows of `link`: from its a side, and from its b side."""
    a, b = record_key(link.a_kind, link.a_serial), record_key(link.b_kind, link.b_serial)
    return _LINK_ROW.pack(a, b, link.type, 0), _LINK_ROW.pack(b, a, link.type, 1)


def write_link_rows(out: BinaryIO, rows: Iterable[bytes]) -> int:
    """Write link rows (already in order); returns how many."""
    out.write(LINKS_MAGIC)
    count = 0
    previous = b""
    for row in rows:
        if len(row) != LINK_ROW_SIZE:
            raise ValueError("a link row has the wrong size")
        key = row[:LINK_KEY_SIZE]
        if key <= previous:
            raise ValueError("link rows must be written in strictly increasing order")
        previous = key
        out.write(row)
        count += 1
    return count


_LINK_SHAPE = struct.Struct("<B20xB20xBB")  # from kind, to kind, LinkType, direction
_LINK_ITEM = struct.Struct(f"<{LINK_KEY_SIZE}s{LINK_ROW_SIZE - LINK_KEY_SIZE}s")
_LINK_TYPES = frozenset(int(t) for t in LinkType)


def _links_body(data: memoryview | bytes | mmap.mmap) -> memoryview:
    """A view of the rows of a links file, every one checked to name a valid link.

    A valid row is one whose kinds, type and direction are valid (the serials are any
    20 bytes), so the distinct shapes, gathered in C, are all there is to check. No
    view is left alive when a check fails (it would keep a mapped file from closing).
    """
    if bytes(data[: len(LINKS_MAGIC)]) != LINKS_MAGIC:
        raise ValueError("not a jpki-va links file")
    if (len(data) - len(LINKS_MAGIC)) % LINK_ROW_SIZE:
        raise ValueError("links file is truncated")
    with memoryview(data) as whole, whole[len(LINKS_MAGIC) :] as body:
        shapes = set(_LINK_SHAPE.iter_unpack(body))
    for from_kind, to_kind, link_type, direction in shapes:
        if from_kind not in _KINDS or to_kind not in _KINDS:
            raise ValueError(f"malformed link row: certificate kind {from_kind} or {to_kind}")
        if link_type not in _LINK_TYPES or direction not in (0, 1):
            raise ValueError(f"malformed link row: type {link_type}, direction {direction}")
    return memoryview(data)[len(LINKS_MAGIC) :]


def link_items(data: memoryview | bytes | mmap.mmap) -> tuple[int, Iterator[tuple[bytes, bytes]]]:
    """How many rows a links file has, and each as (from + to key, type + direction),
    the index's key and value, every row checked."""
    body = _links_body(data)
    return len(body) // LINK_ROW_SIZE, _LINK_ITEM.iter_unpack(body)


# signing records and consents -------------------------------------------------------------
def signing_record_line(record: CertificateRecord) -> dict[str, Any]:
    holder = record.holder
    return {
        "kind": record.kind.name,
        "serial": serial_hex(record.serial),
        "name": holder.name,
        "address": holder.address,
        "birth_date": holder.birth_date,
        "sex": holder.sex,
    }


def parse_signing_record(data: dict[str, Any]) -> SigningRecord:
    try:
        kind = CertKind[data["kind"]]
        if not kind.is_signing:
            raise ValueError(f"{kind.name} has no signing record")
        return SigningRecord(
            kind,
            serial_from_hex(data["serial"]),
            str(data["name"]),
            str(data["address"]),
            str(data["birth_date"]),
            str(data["sex"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed signing record: {exc!r}") from None


def consent_line(record: CertificateRecord, verifier: str, granted: bool) -> dict[str, Any]:
    return {
        "kind": record.kind.name,
        "serial": serial_hex(record.serial),
        "verifier": verifier,
        "granted": granted,
    }


def parse_consent(data: dict[str, Any]) -> ConsentLine:
    try:
        verifier = str(data["verifier"])
        if not verifier or "\x00" in verifier:
            raise ValueError("malformed consent verifier")
        return ConsentLine(
            CertKind[data["kind"]],
            serial_from_hex(data["serial"]),
            verifier,
            bool(data["granted"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed consent: {exc!r}") from None
