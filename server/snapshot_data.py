"""The JSON-lines data files of a snapshot (format: snapshot.py): encode and decode.

One function pair per file, so the publisher and the index builder agree on the
format by construction. Decoders raise ValueError on anything malformed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from server.domain import (
    CertKind,
    CrlReason,
    Link,
    LinkType,
    Loss,
    LossCause,
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
def link_line(link: Link) -> dict[str, Any]:
    return {
        "type": link.type.slug,
        "a_kind": link.a_kind.name,
        "a_serial": serial_hex(link.a_serial),
        "b_kind": link.b_kind.name,
        "b_serial": serial_hex(link.b_serial),
    }


def parse_link(data: dict[str, Any]) -> Link:
    try:
        return Link(
            LinkType[str(data["type"]).upper().replace("-", "_")],
            CertKind[data["a_kind"]],
            serial_from_hex(data["a_serial"]),
            CertKind[data["b_kind"]],
            serial_from_hex(data["b_serial"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed link: {exc!r}") from None


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
