"""The registry: the signer's system of record, in its own LMDB environment.

Every mutation happens inside one write transaction (`Registry.write()`), so a rule
that changes several records (a cascade, a resident event) changes all or none.

Certificate records, holders and loss events are binary (a format byte, a fixed
header, then length-prefixed variable fields), because a full publish reads every
one of them: the header alone answers what the publisher needs per record. Values
written before that format (JSON, first byte `{`) are still read. The small tables
(issuers, verifiers, consents, ...) stay JSON.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
from cryptography import x509

from server.domain import (
    CertKind,
    CrlReason,
    Loss,
    LossCause,
    StatusRecord,
    Verifier,
    from_micros,
    micros,
    parse_record_key,
    record_key,
)
from server.law.issuer_compromise import CARD_OF, Compromise, effective_loss
from server.profiles import Holder


class RegistryError(Exception):
    """Base class of registry failures."""


class NotIssued(RegistryError):
    pass


class AlreadyLost(RegistryError):
    pass


class DuplicateSerial(RegistryError):
    pass


class AlreadyCompromised(RegistryError):
    pass


@dataclass(frozen=True)
class LossTrigger:
    """What ended a card certificate whose loss cascaded to a mobile one (第16条の13)."""

    kind: CertKind
    serial: int
    cause: LossCause

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.name, "serial": self.serial, "cause": self.cause.name}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> LossTrigger | None:
        if data is None:
            return None
        return cls(CertKind[data["kind"]], int(data["serial"]), LossCause[data["cause"]])


@dataclass(frozen=True)
class Consent:
    """A holder's consent to give one verifier their signing records (第18条3項)."""

    resident_code: str
    verifier: str
    granted_at: datetime
    withdrawn_at: datetime | None

    @property
    def in_effect(self) -> bool:
        return self.withdrawn_at is None


@dataclass(frozen=True)
class ConsentChange:
    sequence: int
    resident_code: str
    verifier: str
    granted: bool
    time: datetime


@dataclass(frozen=True)
class MoveOut:
    """A move-out notice (転出届) not yet followed by a move-in (第31条)."""

    resident_code: str
    planned_date: date
    recorded_at: datetime


class DuplicateVerifierCertificate(RegistryError):
    pass


@dataclass(frozen=True)
class IssuerRecord:
    """A CA generation: the root (kind None) or an issuing CA of one kind."""

    kind: CertKind | None
    key_id: bytes
    key_label: str
    certificate_der: bytes
    active: bool

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.certificate_der)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": None if self.kind is None else self.kind.name,
            "key_id": self.key_id.hex(),
            "key_label": self.key_label,
            "certificate": base64.b64encode(self.certificate_der).decode(),
            "active": self.active,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IssuerRecord:
        return cls(
            kind=None if data["kind"] is None else CertKind[data["kind"]],
            key_id=bytes.fromhex(data["key_id"]),
            key_label=data["key_label"],
            certificate_der=base64.b64decode(data["certificate"]),
            active=data["active"],
        )


@dataclass(frozen=True)
class CertificateRecord:
    """An issuance record (発行記録): the certificate and whose it is."""

    kind: CertKind
    serial: int
    issuer_key_id: bytes
    resident_code: str
    partition: str
    holder: Holder
    not_before: datetime
    not_after: datetime
    certificate_der: bytes
    loss: Loss | None = None
    # Mobile kinds: the card certificate of the same purpose the mobile one rests on.
    card_serial: int | None = None
    # CARD_CERT_LOST_EFFECT: which card certificate ended, and by which cause.
    loss_trigger: LossTrigger | None = None

    @property
    def key(self) -> bytes:
        return record_key(self.kind, self.serial)

    def status_record(self) -> StatusRecord:
        return StatusRecord(
            kind=self.kind,
            serial=self.serial,
            not_before=self.not_before,
            not_after=self.not_after,
            partition=self.partition,
            issuer_key_id=self.issuer_key_id,
            loss=self.loss,
        )

    def to_json(self) -> dict[str, Any]:
        loss = self.loss
        return {
            "kind": self.kind.name,
            "serial": self.serial,
            "issuer_key_id": self.issuer_key_id.hex(),
            "resident_code": self.resident_code,
            "partition": self.partition,
            "holder": {
                "name": self.holder.name,
                "address": self.holder.address,
                "birth_date": self.holder.birth_date,
                "sex": self.holder.sex,
            },
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "certificate": base64.b64encode(self.certificate_der).decode(),
            "loss": None
            if loss is None
            else {
                "time": loss.time.isoformat(),
                "cause": loss.cause.name,
                "reason": loss.reason.name,
            },
            "card_serial": self.card_serial,
            "loss_trigger": None if self.loss_trigger is None else self.loss_trigger.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CertificateRecord:
        loss = data["loss"]
        return cls(
            kind=CertKind[data["kind"]],
            serial=data["serial"],
            issuer_key_id=bytes.fromhex(data["issuer_key_id"]),
            resident_code=data["resident_code"],
            partition=data["partition"],
            holder=Holder(**data["holder"]),
            not_before=datetime.fromisoformat(data["not_before"]),
            not_after=datetime.fromisoformat(data["not_after"]),
            certificate_der=base64.b64decode(data["certificate"]),
            loss=None
            if loss is None
            else Loss(
                time=datetime.fromisoformat(loss["time"]),
                cause=LossCause[loss["cause"]],
                reason=CrlReason[loss["reason"]],
            ),
            card_serial=data.get("card_serial"),
            loss_trigger=LossTrigger.from_json(data.get("loss_trigger")),
        )


@dataclass(frozen=True)
class LossEvent:
    """One loss of effect, in the order the registry recorded it.

    `loss.time` is when the certificate lost effect in law; `recorded_at` is the
    registry commit (they differ for the 30-day move-out rule, whose time is the
    end of the 30th day even when the sweep runs later).
    """

    sequence: int
    kind: CertKind
    serial: int
    partition: str
    issuer_key_id: bytes
    loss: Loss
    recorded_at: datetime
    trigger: LossTrigger | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.name,
            "serial": self.serial,
            "partition": self.partition,
            "issuer_key_id": self.issuer_key_id.hex(),
            "time": self.loss.time.isoformat(),
            "cause": self.loss.cause.name,
            "reason": self.loss.reason.name,
            "recorded_at": self.recorded_at.isoformat(),
            "trigger": None if self.trigger is None else self.trigger.to_json(),
        }

    @classmethod
    def from_json(cls, sequence: int, data: dict[str, Any]) -> LossEvent:
        return cls(
            sequence=sequence,
            kind=CertKind[data["kind"]],
            serial=int(data["serial"]),
            partition=data["partition"],
            issuer_key_id=bytes.fromhex(data["issuer_key_id"]),
            loss=Loss(
                time=datetime.fromisoformat(data["time"]),
                cause=LossCause[data["cause"]],
                reason=CrlReason[data["reason"]],
            ),
            recorded_at=datetime.fromisoformat(data.get("recorded_at") or data["time"]),
            trigger=LossTrigger.from_json(data.get("trigger")),
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


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _seq_key(sequence: int) -> bytes:
    return sequence.to_bytes(8, "big")


class RegistryTxn:
    """Typed operations inside one LMDB transaction."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._db = dbs
        self._compromises: dict[bytes, Compromise] | None = None

    # certificates -----------------------------------------------------------------
    def stored_certificate(self, kind: CertKind, serial: int) -> CertificateRecord | None:
        """The record as stored, without the effect of issuer compromises."""
        raw = self._txn.get(record_key(kind, serial), db=self._db["certs"])
        return None if raw is None else decode_certificate(raw)

    def certificate(self, kind: CertKind, serial: int) -> CertificateRecord | None:
        """The record with its effective loss: stored, or by an issuer compromise."""
        record = self.stored_certificate(kind, serial)
        return None if record is None else self._effective(record)

    def _effective(self, record: CertificateRecord) -> CertificateRecord:
        """Apply issuer compromises (law/issuer_compromise.py) to a stored record."""
        compromises = self.compromises()
        if not compromises:
            return record
        card_compromise, card_loss, card = None, None, None
        if record.kind.is_mobile and record.card_serial is not None:
            card = self.stored_certificate(CARD_OF[record.kind], record.card_serial)
            if card is not None:
                card_compromise = compromises.get(card.issuer_key_id)
                card_loss = card.loss
        loss, cascaded = effective_loss(
            record.loss, compromises.get(record.issuer_key_id), card_compromise, card_loss
        )
        if loss is record.loss:
            return record
        trigger = None
        if cascaded and card is not None:
            trigger = LossTrigger(card.kind, card.serial, LossCause.ISSUER_KEY_COMPROMISE)
        return replace(record, loss=loss, loss_trigger=trigger)

    def add_certificate(self, record: CertificateRecord) -> None:
        if not self._txn.put(
            record.key, encode_certificate(record), overwrite=False, db=self._db["certs"]
        ):
            raise DuplicateSerial(f"{record.kind.name} serial {record.serial:X} already issued")
        holder_key = record.resident_code.encode()
        raw = self._txn.get(holder_key, db=self._db["holders"])
        keys = [] if raw is None else holder_keys(raw)
        keys.append(record.key)
        self._txn.put(holder_key, encode_holder_value(keys), db=self._db["holders"])
        # The issuance order, so a delta snapshot can carry what was issued since.
        self._txn.put(_seq_key(self.next_counter("issued")), record.key, db=self._db["issued"])

    def issued_since(self, sequence: int) -> Iterator[CertificateRecord]:
        """Records issued after the `sequence`-th issuance, in issuance order."""
        cursor = self._txn.cursor(db=self._db["issued"])
        if not cursor.set_range(_seq_key(sequence + 1)):
            return
        for _, key in cursor:
            record = self.certificate(*parse_record_key(bytes(key)))
            if record is not None:
                yield record

    def change_mark(self) -> str:
        """Changes whenever anything a snapshot carries changes."""
        return ":".join(
            str(self.counter(name))
            for name in ("issued", "event", "consent", "compromise", "verifiers")
        )

    def certificates(self, kind: CertKind | None = None) -> Iterator[CertificateRecord]:
        """Every issuance record in key order (kind, serial), with its effective loss."""
        cursor = self._txn.cursor(db=self._db["certs"])
        start = b"" if kind is None else bytes([kind])
        if not cursor.set_range(start):
            return
        for key, value in cursor:
            if kind is not None and key[0] != kind:
                break
            yield self._effective(decode_certificate(value))

    def certificate_heads(self) -> Iterator[tuple[bytes, CertificateHead]]:
        """(key, header) of every stored record in key order; no issuer compromises applied."""
        for key, value in self._txn.cursor(db=self._db["certs"]):
            yield bytes(key), certificate_head(value)

    def certificate_head(self, key: bytes) -> CertificateHead | None:
        """The stored header of one record (no issuer compromises applied)."""
        raw = self._txn.get(key, db=self._db["certs"])
        return None if raw is None else certificate_head(raw)

    def holders(self) -> Iterator[tuple[str, list[bytes]]]:
        """(resident code, record keys) of every holder, in resident code order."""
        for code, value in self._txn.cursor(db=self._db["holders"]):
            yield bytes(code).decode(), holder_keys(value)

    def holder_certificates(self, resident_code: str) -> list[CertificateRecord]:
        raw = self._txn.get(resident_code.encode(), db=self._db["holders"])
        if raw is None:
            return []
        out = []
        for key in holder_keys(raw):
            record = self.certificate(*parse_record_key(key))
            if record is not None:
                out.append(record)
        return out

    def is_resident(self, resident_code: str) -> bool:
        return self._txn.get(resident_code.encode(), db=self._db["holders"]) is not None

    def record_loss(
        self,
        kind: CertKind,
        serial: int,
        loss: Loss,
        *,
        recorded_at: datetime | None = None,
        trigger: LossTrigger | None = None,
    ) -> LossEvent:
        """Record a loss of effect; loss is final, so a second one is refused."""
        record = self.certificate(kind, serial)
        if record is None:
            raise NotIssued(f"{kind.name} serial {serial:X} was never issued")
        if record.loss is not None:
            raise AlreadyLost(
                f"{kind.name} serial {serial:X} already lost effect "
                f"({record.loss.cause.name} at {record.loss.time.isoformat()})"
            )
        updated = replace(record, loss=loss, loss_trigger=trigger)
        self._txn.put(record.key, encode_certificate(updated), db=self._db["certs"])
        sequence = self.next_counter("event")
        event = LossEvent(
            sequence=sequence,
            kind=kind,
            serial=serial,
            partition=record.partition,
            issuer_key_id=record.issuer_key_id,
            loss=loss,
            recorded_at=recorded_at or loss.time,
            trigger=trigger,
        )
        self._txn.put(_seq_key(sequence), encode_event(event), db=self._db["events"])
        return event

    def events_since(self, sequence: int) -> Iterator[LossEvent]:
        """Loss events with a sequence number greater than `sequence`."""
        cursor = self._txn.cursor(db=self._db["events"])
        if not cursor.set_range(_seq_key(sequence + 1)):
            return
        for key, value in cursor:
            yield decode_event(int.from_bytes(key, "big"), value)

    # renewal links ----------------------------------------------------------------
    def put_renewal(self, old: CertificateRecord, new: CertificateRecord) -> None:
        self._txn.put(old.key, new.key, db=self._db["renewals"])

    def renewals(self) -> Iterator[tuple[tuple[CertKind, int], tuple[CertKind, int]]]:
        """(old, new) for every renewal, in the old certificate's key order."""
        for old, new in self._txn.cursor(db=self._db["renewals"]):
            yield parse_record_key(bytes(old)), parse_record_key(bytes(new))

    def renewed_by(self, kind: CertKind, serial: int) -> tuple[CertKind, int] | None:
        raw = self._txn.get(record_key(kind, serial), db=self._db["renewals"])
        return None if raw is None else parse_record_key(bytes(raw))

    # issuer compromise ------------------------------------------------------------
    def compromises(self) -> dict[bytes, Compromise]:
        if self._compromises is None:
            self._compromises = {}
            for key, value in self._txn.cursor(db=self._db["compromises"]):
                data = json.loads(bytes(value))
                self._compromises[bytes(key)] = Compromise(
                    bytes(key), CertKind[data["kind"]], datetime.fromisoformat(data["time"])
                )
        return self._compromises

    def put_compromise(self, compromise: Compromise) -> None:
        value = {"kind": compromise.kind.name, "time": compromise.time.isoformat()}
        if not self._txn.put(
            compromise.key_id, _dumps(value), overwrite=False, db=self._db["compromises"]
        ):
            raise AlreadyCompromised(
                f"issuer generation {compromise.key_id.hex()} is already recorded as compromised"
            )
        self._compromises = None
        self.next_counter("compromise")

    # move-out notices -------------------------------------------------------------
    def move_out(self, resident_code: str) -> MoveOut | None:
        raw = self._txn.get(resident_code.encode(), db=self._db["moveouts"])
        if raw is None:
            return None
        data = json.loads(bytes(raw))
        return MoveOut(
            resident_code,
            date.fromisoformat(data["planned_date"]),
            datetime.fromisoformat(data["recorded_at"]),
        )

    def put_move_out(self, notice: MoveOut) -> None:
        value = {
            "planned_date": notice.planned_date.isoformat(),
            "recorded_at": notice.recorded_at.isoformat(),
        }
        self._txn.put(notice.resident_code.encode(), _dumps(value), db=self._db["moveouts"])

    def clear_move_out(self, resident_code: str) -> bool:
        return bool(self._txn.delete(resident_code.encode(), db=self._db["moveouts"]))

    def move_outs(self) -> list[MoveOut]:
        cursor = self._txn.cursor(db=self._db["moveouts"])
        return [m for k, _ in cursor if (m := self.move_out(bytes(k).decode())) is not None]

    # consent ----------------------------------------------------------------------
    @staticmethod
    def _consent_key(resident_code: str, verifier: str) -> bytes:
        return resident_code.encode() + b"\x00" + verifier.encode()

    def consent(self, resident_code: str, verifier: str) -> Consent | None:
        raw = self._txn.get(self._consent_key(resident_code, verifier), db=self._db["consents"])
        if raw is None:
            return None
        data = json.loads(bytes(raw))
        withdrawn = data["withdrawn_at"]
        return Consent(
            resident_code,
            verifier,
            datetime.fromisoformat(data["granted_at"]),
            None if withdrawn is None else datetime.fromisoformat(withdrawn),
        )

    def consents(self, resident_code: str | None = None) -> Iterator[Consent]:
        """Consents (in effect or withdrawn), of one holder or of everyone."""
        cursor = self._txn.cursor(db=self._db["consents"])
        prefix = b"" if resident_code is None else resident_code.encode() + b"\x00"
        if not cursor.set_range(prefix):
            return
        for key, _ in cursor:
            if not bytes(key).startswith(prefix):
                break
            code, verifier = bytes(key).decode().split("\x00", 1)
            consent = self.consent(code, verifier)
            if consent is not None:
                yield consent

    def set_consent(self, consent: Consent) -> ConsentChange:
        value = {
            "granted_at": consent.granted_at.isoformat(),
            "withdrawn_at": None
            if consent.withdrawn_at is None
            else consent.withdrawn_at.isoformat(),
        }
        self._txn.put(
            self._consent_key(consent.resident_code, consent.verifier),
            _dumps(value),
            db=self._db["consents"],
        )
        change = ConsentChange(
            sequence=self.next_counter("consent"),
            resident_code=consent.resident_code,
            verifier=consent.verifier,
            granted=consent.in_effect,
            time=consent.withdrawn_at or consent.granted_at,
        )
        self._txn.put(
            _seq_key(change.sequence),
            _dumps(
                {
                    "resident_code": change.resident_code,
                    "verifier": change.verifier,
                    "granted": change.granted,
                    "time": change.time.isoformat(),
                }
            ),
            db=self._db["consent_log"],
        )
        return change

    def consent_changes_since(self, sequence: int) -> Iterator[ConsentChange]:
        cursor = self._txn.cursor(db=self._db["consent_log"])
        if not cursor.set_range(_seq_key(sequence + 1)):
            return
        for key, value in cursor:
            data = json.loads(bytes(value))
            yield ConsentChange(
                int.from_bytes(key, "big"),
                data["resident_code"],
                data["verifier"],
                data["granted"],
                datetime.fromisoformat(data["time"]),
            )

    # issuers ----------------------------------------------------------------------
    def issuers(self) -> list[IssuerRecord]:
        cursor = self._txn.cursor(db=self._db["issuers"])
        return [IssuerRecord.from_json(json.loads(bytes(v))) for _, v in cursor]

    def put_issuer(self, issuer: IssuerRecord) -> None:
        self._txn.put(issuer.key_id, _dumps(issuer.to_json()), db=self._db["issuers"])

    # verifiers (kept here, carried in snapshots) ------------------------------------
    def verifiers(self) -> list[Verifier]:
        cursor = self._txn.cursor(db=self._db["verifiers"])
        return [Verifier.from_json(json.loads(bytes(v))) for _, v in cursor]

    def verifier(self, verifier_id: str) -> Verifier | None:
        raw = self._txn.get(verifier_id.encode(), db=self._db["verifiers"])
        return None if raw is None else Verifier.from_json(json.loads(bytes(raw)))

    def put_verifier(self, verifier: Verifier) -> None:
        """Add or replace a verifier; a certificate identifies one verifier only."""
        for other in self.verifiers():
            shared = set(other.cert_fingerprints) & set(verifier.cert_fingerprints)
            if other.id != verifier.id and shared:
                raise DuplicateVerifierCertificate(
                    f"certificate {sorted(shared)[0].hex()} already identifies "
                    f"verifier {other.id!r}"
                )
        self._txn.put(verifier.id.encode(), _dumps(verifier.to_json()), db=self._db["verifiers"])
        self.next_counter("verifiers")

    def remove_verifier(self, verifier_id: str) -> bool:
        removed = bool(self._txn.delete(verifier_id.encode(), db=self._db["verifiers"]))
        if removed:
            self.next_counter("verifiers")
        return removed

    # counters and settings --------------------------------------------------------
    def counter(self, name: str) -> int:
        raw = self._txn.get(name.encode(), db=self._db["meta"])
        return 0 if raw is None else int(raw)

    def next_counter(self, name: str) -> int:
        value = self.counter(name) + 1
        self._txn.put(name.encode(), str(value).encode(), db=self._db["meta"])
        return value

    def set_counter(self, name: str, value: int) -> None:
        self._txn.put(name.encode(), str(value).encode(), db=self._db["meta"])

    def meta(self, name: str) -> bytes | None:
        raw = self._txn.get(name.encode(), db=self._db["meta"])
        return None if raw is None else bytes(raw)

    def set_meta(self, name: str, value: bytes) -> None:
        self._txn.put(name.encode(), value, db=self._db["meta"])


class Registry:
    """The LMDB environment of the registry. One per signer; the signer is its only writer."""

    _DBS = (
        "certs",
        "holders",
        "issuers",
        "events",
        "meta",
        "verifiers",
        "renewals",
        "compromises",
        "moveouts",
        "consents",
        "consent_log",
        "issued",
    )

    def __init__(self, path: Path, *, map_size: int = 1 << 36) -> None:
        path.mkdir(parents=True, exist_ok=True)
        # sync and metasync stay on: a registry write the caller saw must survive a crash.
        self._env = lmdb.open(str(path), map_size=map_size, max_dbs=len(self._DBS), subdir=True)
        self._dbs = {name: self._env.open_db(name.encode()) for name in self._DBS}

    @contextmanager
    def write(self) -> Iterator[RegistryTxn]:
        with self._env.begin(write=True) as txn:
            yield RegistryTxn(txn, self._dbs)

    @contextmanager
    def read(self) -> Iterator[RegistryTxn]:
        with self._env.begin(write=False) as txn:
            yield RegistryTxn(txn, self._dbs)

    def close(self) -> None:
        self._env.close()
