"""The JSON-lines data files of a snapshot (format: snapshot.py): encode and decode.

One function pair per file, so the publisher and the index builder agree on the
format by construction. Decoders raise ValueError on anything malformed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from server.domain import (
    CertKind,
    CrlReason,
    Link,
    LinkType,
    Loss,
    LossCause,
    parse_record_key,
    record_key,
    serial_from_hex,
    serial_hex,
)
from server.registry import CertificateRecord, LossEvent, LossTrigger


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
def event_line(event: LossEvent) -> dict[str, Any]:
    return {
        "sequence": event.sequence,
        "kind": event.kind.name,
        "serial": serial_hex(event.serial),
        "partition": event.partition,
        "issuer_key_id": event.issuer_key_id.hex(),
        "time": event.loss.time.isoformat(),
        "recorded_at": event.recorded_at.isoformat(),
        "cause": event.loss.cause.name,
        "reason": event.loss.reason.name,
        "trigger": None
        if event.trigger is None
        else {
            "kind": event.trigger.kind.name,
            "serial": serial_hex(event.trigger.serial),
            "cause": event.trigger.cause.name,
        },
    }


def parse_event(data: dict[str, Any]) -> LossEvent:
    try:
        trigger = data["trigger"]
        return LossEvent(
            sequence=int(data["sequence"]),
            kind=CertKind[data["kind"]],
            serial=serial_from_hex(data["serial"]),
            partition=str(data["partition"]),
            issuer_key_id=bytes.fromhex(data["issuer_key_id"]),
            loss=Loss(
                datetime.fromisoformat(data["time"]),
                LossCause[data["cause"]],
                CrlReason[data["reason"]],
            ),
            recorded_at=datetime.fromisoformat(data["recorded_at"]),
            trigger=None
            if trigger is None
            else LossTrigger(
                CertKind[trigger["kind"]],
                serial_from_hex(trigger["serial"]),
                LossCause[trigger["cause"]],
            ),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed event: {exc!r}") from None


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


def parse_link_row(row: bytes) -> Link:
    """The link a row states (either direction)."""
    try:
        first, second, link_type, direction = _LINK_ROW.unpack(row)
        if direction not in (0, 1):
            raise ValueError(f"link direction {direction}")
        a, b = (first, second) if direction == 0 else (second, first)
        return Link(LinkType(link_type), *parse_record_key(a), *parse_record_key(b))
    except (struct.error, ValueError) as exc:
        raise ValueError(f"malformed link row: {exc}") from None


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


def read_link_rows(data: memoryview | bytes) -> Iterator[bytes]:
    """Every row of a links file, each checked to name a valid link."""
    if bytes(data[: len(LINKS_MAGIC)]) != LINKS_MAGIC:
        raise ValueError("not a jpki-va links file")
    body = data[len(LINKS_MAGIC) :]
    if len(body) % LINK_ROW_SIZE:
        raise ValueError("links file is truncated")
    for offset in range(0, len(body), LINK_ROW_SIZE):
        row = bytes(body[offset : offset + LINK_ROW_SIZE])
        parse_link_row(row)
        yield row


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
