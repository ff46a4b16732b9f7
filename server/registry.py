"""The registry: the signer's system of record, in its own LMDB environment.

Every mutation happens inside one write transaction (`Registry.write()`), so a rule
that changes several records (a cascade, a resident event) changes all or none.
Values are JSON: the registry favours clarity over speed; the responder's index is
the fast path.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import lmdb
from cryptography import x509

from server.domain import (
    CertKind,
    CrlReason,
    Loss,
    LossCause,
    StatusRecord,
    Verifier,
    parse_record_key,
    record_key,
)
from server.profiles import Holder


class RegistryError(Exception):
    """Base class of registry failures."""


class NotIssued(RegistryError):
    pass


class AlreadyLost(RegistryError):
    pass


class DuplicateSerial(RegistryError):
    pass


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
        )


@dataclass(frozen=True)
class LossEvent:
    """One loss of effect, in the order the registry recorded it."""

    sequence: int
    kind: CertKind
    serial: int
    partition: str
    issuer_key_id: bytes
    loss: Loss


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _seq_key(sequence: int) -> bytes:
    return sequence.to_bytes(8, "big")


class RegistryTxn:
    """Typed operations inside one LMDB transaction."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._db = dbs

    # certificates -----------------------------------------------------------------
    def certificate(self, kind: CertKind, serial: int) -> CertificateRecord | None:
        raw = self._txn.get(record_key(kind, serial), db=self._db["certs"])
        return None if raw is None else CertificateRecord.from_json(json.loads(bytes(raw)))

    def add_certificate(self, record: CertificateRecord) -> None:
        if not self._txn.put(
            record.key, _dumps(record.to_json()), overwrite=False, db=self._db["certs"]
        ):
            raise DuplicateSerial(f"{record.kind.name} serial {record.serial:X} already issued")
        holder_key = record.resident_code.encode()
        raw = self._txn.get(holder_key, db=self._db["holders"])
        keys: list[str] = [] if raw is None else json.loads(bytes(raw))["certs"]
        keys.append(record.key.hex())
        self._txn.put(holder_key, _dumps({"certs": keys}), db=self._db["holders"])
        self.next_counter("issued")

    def change_mark(self) -> str:
        """Changes whenever a certificate is issued or loses effect, or a verifier changes."""
        return f"{self.counter('issued')}:{self.counter('event')}:{self.counter('verifiers')}"

    def certificates(self, kind: CertKind | None = None) -> Iterator[CertificateRecord]:
        """Every issuance record in key order (kind, serial)."""
        cursor = self._txn.cursor(db=self._db["certs"])
        start = b"" if kind is None else bytes([kind])
        if not cursor.set_range(start):
            return
        for key, value in cursor:
            if kind is not None and key[0] != kind:
                break
            yield CertificateRecord.from_json(json.loads(bytes(value)))

    def holder_certificates(self, resident_code: str) -> list[CertificateRecord]:
        raw = self._txn.get(resident_code.encode(), db=self._db["holders"])
        if raw is None:
            return []
        out = []
        for hexkey in json.loads(bytes(raw))["certs"]:
            kind, serial = parse_record_key(bytes.fromhex(hexkey))
            record = self.certificate(kind, serial)
            if record is not None:
                out.append(record)
        return out

    def record_loss(self, kind: CertKind, serial: int, loss: Loss) -> LossEvent:
        """Record a loss of effect; loss is final, so a second one is refused."""
        record = self.certificate(kind, serial)
        if record is None:
            raise NotIssued(f"{kind.name} serial {serial:X} was never issued")
        if record.loss is not None:
            raise AlreadyLost(
                f"{kind.name} serial {serial:X} already lost effect "
                f"({record.loss.cause.name} at {record.loss.time.isoformat()})"
            )
        updated = replace(record, loss=loss)
        self._txn.put(record.key, _dumps(updated.to_json()), db=self._db["certs"])
        sequence = self.next_counter("event")
        event = LossEvent(
            sequence=sequence,
            kind=kind,
            serial=serial,
            partition=record.partition,
            issuer_key_id=record.issuer_key_id,
            loss=loss,
        )
        self._txn.put(
            _seq_key(sequence),
            _dumps(
                {
                    "kind": kind.name,
                    "serial": serial,
                    "partition": record.partition,
                    "issuer_key_id": record.issuer_key_id.hex(),
                    "time": loss.time.isoformat(),
                    "cause": loss.cause.name,
                    "reason": loss.reason.name,
                }
            ),
            db=self._db["events"],
        )
        return event

    def events_since(self, sequence: int) -> Iterator[LossEvent]:
        """Loss events with a sequence number greater than `sequence`."""
        cursor = self._txn.cursor(db=self._db["events"])
        if not cursor.set_range(_seq_key(sequence + 1)):
            return
        for key, value in cursor:
            data = json.loads(bytes(value))
            yield LossEvent(
                sequence=int.from_bytes(key, "big"),
                kind=CertKind[data["kind"]],
                serial=data["serial"],
                partition=data["partition"],
                issuer_key_id=bytes.fromhex(data["issuer_key_id"]),
                loss=Loss(
                    time=datetime.fromisoformat(data["time"]),
                    cause=LossCause[data["cause"]],
                    reason=CrlReason[data["reason"]],
                ),
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

    _DBS = ("certs", "holders", "issuers", "events", "meta", "verifiers")

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
