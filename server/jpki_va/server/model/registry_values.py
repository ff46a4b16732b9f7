"""The values the registry keeps, as signer, snapshots and responder all read them."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from cryptography import x509

from jpki_va.core.domain import (
    CertKind,
    CrlReason,
    Loss,
    LossCause,
    StatusRecord,
    record_key,
)
from jpki_va.server.model.holder import Holder

# A CRL's scope: (kind, issuing-CA generation key id, partition). One CRL and one delta
# CRL each: the signer signs per scope, and the index keeps each one's times.
Scope = tuple[CertKind, bytes, str]


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
    # The signing certificates it covers (law/consent_scope.py), and whether it
    # extends to the holder's later ones.
    covers: tuple[tuple[CertKind, int], ...] = ()
    successors: bool = True

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
class MobileApplication:
    """A mobile application confirmed at step one (第16条の2第3項, 第35条の2第3項),
    waiting for the applicant's public key (第5項) until it expires or is completed."""

    id: str  # random: whoever holds it completes the application
    kind: CertKind
    resident_code: str
    card_serial: int  # the CARD_SIGN whose key signed the notice
    holder: Holder  # the notified items, which the certificate will carry
    begun_at: datetime
    expires_at: datetime
    notice_digest: bytes
    completed_serial: int | None = None  # the certificate issued; an application is used once

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.name,
            "resident_code": self.resident_code,
            "card_serial": self.card_serial,
            "holder": [
                self.holder.name,
                self.holder.address,
                self.holder.birth_date,
                self.holder.sex,
            ],
            "begun_at": self.begun_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "notice_digest": self.notice_digest.hex(),
            "completed_serial": self.completed_serial,
        }

    @classmethod
    def from_json(cls, id: str, data: dict[str, Any]) -> MobileApplication:
        name, address, birth_date, sex = data["holder"]
        return cls(
            id=id,
            kind=CertKind[data["kind"]],
            resident_code=data["resident_code"],
            card_serial=int(data["card_serial"]),
            holder=Holder(name=name, address=address, birth_date=birth_date, sex=sex),
            begun_at=datetime.fromisoformat(data["begun_at"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
            notice_digest=bytes.fromhex(data["notice_digest"]),
            completed_serial=data["completed_serial"],
        )


@dataclass(frozen=True)
class MoveOut:
    """A move-out notice (転出届) not yet followed by a move-in (第31条)."""

    resident_code: str
    planned_date: date
    recorded_at: datetime


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

    @property
    def scope(self) -> Scope:
        """The scope of the CRL that lists it."""
        return self.kind, self.issuer_key_id, self.partition

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


@dataclass(frozen=True)
class HolderNotice:
    """A notice to a holder in the registry's outbox (law/holder_notice.py says what)."""

    id: int  # 0 until the registry gives it its sequence number
    kind: CertKind
    serial: int
    resident_code: str  # whose it is (the municipality finds the current address by it)
    municipality_code: str
    name: str
    address: str
    article: str
    lost_at: datetime
    text: str
    delivered_at: datetime | None = None
    delivery: str = ""
    sent_at: datetime | None = None

    @property
    def pending(self) -> bool:
        return self.sent_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.name,
            "serial": self.serial,
            "resident_code": self.resident_code,
            "municipality_code": self.municipality_code,
            "name": self.name,
            "address": self.address,
            "article": self.article,
            "lost_at": self.lost_at.isoformat(),
            "text": self.text,
            "delivered_at": _iso(self.delivered_at),
            "delivery": self.delivery,
            "sent_at": _iso(self.sent_at),
        }

    @classmethod
    def from_json(cls, notice_id: int, data: dict[str, Any]) -> HolderNotice:
        return cls(
            id=notice_id,
            kind=CertKind[data["kind"]],
            serial=int(data["serial"]),
            resident_code=data["resident_code"],
            municipality_code=data["municipality_code"],
            name=data["name"],
            address=data["address"],
            article=data["article"],
            lost_at=datetime.fromisoformat(data["lost_at"]),
            text=data["text"],
            delivered_at=_from_iso(data["delivered_at"]),
            delivery=data["delivery"],
            sent_at=_from_iso(data["sent_at"]),
        )


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _from_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
