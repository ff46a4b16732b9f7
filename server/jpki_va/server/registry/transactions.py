"""The registry: the signer's system of record, in its own LMDB environment.

Every mutation happens inside one write transaction (`Registry.write()`), so a rule
that changes several records (a cascade, a resident event) changes all or none.

Certificate records, holders and loss events are binary (a format byte, a fixed
header, then length-prefixed variable fields), because a full publish reads every
one of them: the header alone answers what the publisher needs per record. Values
written before that format (JSON, first byte `{`) are still read. The small tables
(issuers, verifiers, consents, ...) stay JSON.

Every certified public key is indexed by its hash (`model/public_key.py`), in the
transaction that adds its certificate, so the signer can refuse a key already
certified (`law/key_pair.py`). A registry made before that table has it filled once,
when it is opened.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import lmdb

from jpki_va.core.domain import (
    CertKind,
    Loss,
    LossCause,
    Verifier,
    parse_record_key,
    record_key,
)
from jpki_va.server.base.private_files import LMDB_MODE, private_dir
from jpki_va.server.law.issuer_compromise import (
    CARD_OF,
    Compromise,
    CompromiseNature,
    effective_loss,
)
from jpki_va.server.model.public_key import certificate_key_hash
from jpki_va.server.model.registry_values import (
    CertificateRecord,
    Consent,
    ConsentChange,
    HolderNotice,
    IssuerRecord,
    LossEvent,
    LossTrigger,
    MobileApplication,
    MoveOut,
)
from jpki_va.server.registry.codec import (
    CertificateHead,
    LinkHead,
    certificate_der,
    certificate_head,
    decode_certificate,
    decode_event,
    encode_certificate,
    encode_event,
    encode_holder_value,
    encode_key_value,
    holder_keys,
    key_record_keys,
    link_head,
)

log = logging.getLogger(__name__)

# Set in meta once every record's public key is in the public key table.
KEYS_INDEXED = "public_keys_indexed"


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


class DuplicateVerifierCertificate(RegistryError):
    pass


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

    @property
    def transaction_id(self) -> int:
        """The commit this transaction sees (equal ids: the same registry state)."""
        return int(self._txn.id())

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
        self._index_key(record.key, record.certificate_der)

    # public keys ------------------------------------------------------------------
    def key_certificates(self, key_hash: bytes) -> list[CertificateRecord]:
        """Every certificate issued for the public key with this hash (model/public_key.py)."""
        raw = self._txn.get(key_hash, db=self._db["public_keys"])
        if raw is None:
            return []
        out = []
        for key in key_record_keys(raw):
            record = self.certificate(*parse_record_key(key))
            if record is not None:
                out.append(record)
        return out

    def _index_key(self, record_key: bytes, der: bytes) -> None:
        key_hash = certificate_key_hash(der)
        if key_hash is None:
            return
        raw = self._txn.get(key_hash, db=self._db["public_keys"])
        keys = [] if raw is None else key_record_keys(raw)
        if record_key in keys:
            return
        keys.append(record_key)
        self._txn.put(key_hash, encode_key_value(keys), db=self._db["public_keys"])

    def index_public_keys(self) -> int:
        """Fill the public key table from every record, once; how many records it indexed.

        For registries made before the table existed. Marked done in meta, so it runs
        once; indexing a record twice changes nothing, so a rerun would be harmless.
        """
        if self.meta(KEYS_INDEXED) is not None:
            return 0
        count = 0
        for key, value in self._txn.cursor(db=self._db["certs"]):
            der = certificate_der(value)
            if not der:
                continue
            try:
                self._index_key(bytes(key), der)
            except ValueError:
                # One damaged body must not keep the registry from opening.
                log.warning("record %s: the certificate body does not parse", bytes(key).hex())
                continue
            count += 1
        self.set_meta(KEYS_INDEXED, b"1")
        return count

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

    def holder_link_heads(self) -> Iterator[list[LinkHead]]:
        """Per holder, in resident code order, `codec.link_head` of each stored record
        (no issuer compromises applied): what a full publish's links pass reads."""
        get, certs = self._txn.get, self._db["certs"]
        for value in self._txn.cursor(db=self._db["holders"]).iternext(keys=False):
            heads = []
            for key in holder_keys(value):
                raw = get(key, db=certs)
                if raw is not None:
                    heads.append(link_head(raw))
            yield heads

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

    # purge (保存期間 over: law/retention.py, signer/purge.py) ---------------------------
    def delete_certificate(self, key: bytes) -> str | None:
        """Delete one issuance record (its loss with it) and every index naming it.

        Returns the holder's resident code when this was the holder's last record:
        nothing in the registry then names that resident code but what the caller
        deletes next (consents, a move-out notice)."""
        raw = self._txn.get(key, db=self._db["certs"])
        if raw is None:
            return None
        record = decode_certificate(raw)
        self._txn.delete(key, db=self._db["certs"])
        self._txn.delete(key, db=self._db["renewals"])
        key_hash = certificate_key_hash(record.certificate_der) if record.certificate_der else None
        if key_hash is not None:
            codec = (key_record_keys, encode_key_value)
            _remove_key(self._txn, self._db["public_keys"], key_hash, key, codec)
        code = record.resident_code.encode()
        codec = (holder_keys, encode_holder_value)
        left = _remove_key(self._txn, self._db["holders"], code, key, codec)
        return record.resident_code if left == 0 else None

    def delete_events(self, sequences: list[int]) -> None:
        for sequence in sequences:
            self._txn.delete(_seq_key(sequence), db=self._db["events"])

    def delete_consent(self, resident_code: str, verifier: str) -> None:
        self._txn.delete(self._consent_key(resident_code, verifier), db=self._db["consents"])

    def consent_log_before(self, when: datetime) -> list[int]:
        """Sequences of consent changes made before `when` (they name resident codes)."""
        out = []
        for key, value in self._txn.cursor(db=self._db["consent_log"]):
            if datetime.fromisoformat(json.loads(bytes(value))["time"]) >= when:
                break  # in sequence order, which is time order
            out.append(int.from_bytes(key, "big"))
        return out

    def delete_consent_log(self, sequences: list[int]) -> None:
        for sequence in sequences:
            self._txn.delete(_seq_key(sequence), db=self._db["consent_log"])

    # the notice outbox (law/holder_notice.py) ----------------------------------------
    def add_notice(self, notice: HolderNotice) -> HolderNotice:
        """Put a notice in the outbox, pending; returns it with its sequence number."""
        stored = replace(notice, id=self.next_counter("notice"))
        self._put_notice(stored)
        return stored

    def _put_notice(self, notice: HolderNotice) -> None:
        key = _seq_key(notice.id)
        self._txn.put(key, _dumps(notice.to_json()), db=self._db["notices"])
        if notice.pending:
            self._txn.put(key, b"", db=self._db["notices_pending"])
        else:
            self._txn.delete(key, db=self._db["notices_pending"])

    def notice(self, notice_id: int) -> HolderNotice | None:
        raw = self._txn.get(_seq_key(notice_id), db=self._db["notices"])
        return None if raw is None else HolderNotice.from_json(notice_id, json.loads(bytes(raw)))

    def update_notice(self, notice: HolderNotice) -> None:
        """Record its delivery or sending (the notice must be in the outbox)."""
        if self.notice(notice.id) is None:
            raise NotIssued(f"no notice {notice.id} in the outbox")
        self._put_notice(notice)

    def notices(self, *, pending_only: bool = False) -> list[HolderNotice]:
        """The outbox, oldest first."""
        if pending_only:
            cursor = self._txn.cursor(db=self._db["notices_pending"])
            ids = [int.from_bytes(k, "big") for k in cursor.iternext(values=False)]
            return [n for i in ids if (n := self.notice(i)) is not None]
        return [
            HolderNotice.from_json(int.from_bytes(k, "big"), json.loads(bytes(v)))
            for k, v in self._txn.cursor(db=self._db["notices"])
        ]

    def pending_notices(self) -> tuple[int, HolderNotice | None]:
        """How many notices are not yet sent, and the oldest of them."""
        count = int(self._txn.stat(self._db["notices_pending"])["entries"])
        cursor = self._txn.cursor(db=self._db["notices_pending"])
        oldest = self.notice(int.from_bytes(cursor.key(), "big")) if cursor.first() else None
        return count, oldest

    def delete_notices(self, ids: list[int]) -> None:
        for notice_id in ids:
            self._txn.delete(_seq_key(notice_id), db=self._db["notices"])
            self._txn.delete(_seq_key(notice_id), db=self._db["notices_pending"])

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
                nature = data.get("nature")
                self._compromises[bytes(key)] = Compromise(
                    bytes(key),
                    CertKind[data["kind"]],
                    datetime.fromisoformat(data["time"]),
                    None if nature is None else CompromiseNature[nature],
                )
        return self._compromises

    def put_compromise(self, compromise: Compromise) -> None:
        value = {"kind": compromise.kind.name, "time": compromise.time.isoformat()}
        if compromise.nature is not None:
            value["nature"] = compromise.nature.name
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

    # holder requests (第11条, 第16条の10, 第30条, 第35条の10) ----------------------------
    def put_holder_request(self, kind: CertKind, serial: int, request: str, on: date) -> None:
        """Which request (APPLICATION: 申請, NOTIFICATION: 届出) a holder-request loss was."""
        value = {"request": request, "recorded_on": on.isoformat()}
        self._txn.put(record_key(kind, serial), _dumps(value), db=self._db["holder_requests"])

    def holder_request(self, kind: CertKind, serial: int) -> str | None:
        raw = self._txn.get(record_key(kind, serial), db=self._db["holder_requests"])
        return None if raw is None else str(json.loads(bytes(raw))["request"])

    # mobile applications (第16条の2, 第35条の2) ---------------------------------------
    def mobile_application(self, application_id: str) -> MobileApplication | None:
        raw = self._txn.get(application_id.encode(), db=self._db["mobile_applications"])
        return (
            None
            if raw is None
            else MobileApplication.from_json(application_id, json.loads(bytes(raw)))
        )

    def put_mobile_application(self, application: MobileApplication) -> None:
        """Add a new application or record its completion; a notice begins one only."""
        self._txn.put(
            application.id.encode(),
            _dumps(application.to_json()),
            db=self._db["mobile_applications"],
        )
        self._txn.put(
            application.notice_digest, application.id.encode(), db=self._db["mobile_notices"]
        )

    def mobile_applications(self) -> list[MobileApplication]:
        """Every application kept, begun or completed."""
        return [
            MobileApplication.from_json(bytes(k).decode(), json.loads(bytes(v)))
            for k, v in self._txn.cursor(db=self._db["mobile_applications"])
        ]

    def delete_mobile_application(self, application: MobileApplication) -> None:
        """The application and its notice's digest (the notice has long gone stale)."""
        self._txn.delete(application.id.encode(), db=self._db["mobile_applications"])
        self._txn.delete(application.notice_digest, db=self._db["mobile_notices"])

    def notice_application(self, notice_digest: bytes) -> str | None:
        """The application a notice with this digest began, if any."""
        raw = self._txn.get(notice_digest, db=self._db["mobile_notices"])
        return None if raw is None else bytes(raw).decode()

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
            tuple((CertKind[k], int(s)) for k, s in data.get("covers", [])),
            # Recorded before scopes: it covered every signing certificate then.
            bool(data.get("successors", True)),
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
            "covers": [[k.name, s] for k, s in consent.covers],
            "successors": consent.successors,
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


def _remove_key(
    txn: lmdb.Transaction,
    db: Any,
    name: bytes,
    key: bytes,
    codec: tuple[Callable[[bytes | memoryview], list[bytes]], Callable[[list[bytes]], bytes]],
) -> int:
    """Take `key` out of the record-key list stored under `name`; how many are left."""
    decode, encode = codec
    raw = txn.get(name, db=db)
    if raw is None:
        return 0
    keys = [k for k in decode(raw) if k != key]
    if keys:
        txn.put(name, encode(keys), db=db)
    else:
        txn.delete(name, db=db)
    return len(keys)


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
        "public_keys",
        "notices",
        "notices_pending",
        "mobile_applications",
        "mobile_notices",
        "holder_requests",
    )

    def __init__(self, path: Path, *, map_size: int = 1 << 36) -> None:
        private_dir(path)  # resident codes: for the signer's user only
        # sync and metasync stay on: a registry write the caller saw must survive a crash.
        self._env = lmdb.open(
            str(path), map_size=map_size, max_dbs=len(self._DBS), subdir=True, mode=LMDB_MODE
        )
        self._dbs = {name: self._env.open_db(name.encode()) for name in self._DBS}
        self._watchers: list[Callable[[], None]] = []
        with self.read() as tx:
            done = tx.meta(KEYS_INDEXED) is not None
        if not done:  # a registry from before the public key table: fill it, once
            with self.write() as tx:
                indexed = tx.index_public_keys()
            if indexed:
                log.info("indexed the public keys of %d existing certificates", indexed)

    def watch(self, committed: Callable[[], None]) -> None:
        """Call `committed` after every write transaction that commits (the signer's
        publisher wakes on it instead of waiting out its interval); it must be quick."""
        self._watchers.append(committed)

    @contextmanager
    def write(self) -> Iterator[RegistryTxn]:
        with self._env.begin(write=True) as txn:
            yield RegistryTxn(txn, self._dbs)
        for committed in self._watchers:
            committed()

    @contextmanager
    def read(self) -> Iterator[RegistryTxn]:
        with self._env.begin(write=False) as txn:
            yield RegistryTxn(txn, self._dbs)

    @property
    def path(self) -> Path:
        return Path(self._env.path())

    @classmethod
    @contextmanager
    def reader(cls, path: Path) -> Iterator[RegistryTxn]:
        """One read transaction on a registry another process holds open (read-only:
        nothing created, nothing migrated)."""
        env = lmdb.open(str(path), readonly=True, max_dbs=len(cls._DBS), subdir=True)
        try:
            dbs = {name: env.open_db(name.encode(), create=False) for name in cls._DBS}
            with env.begin(write=False) as txn:
                yield RegistryTxn(txn, dbs)
        finally:
            env.close()

    def copy_compacted(self, directory: Path) -> None:
        """A consistent copy of the whole environment in `directory` (empty), without
        free pages: LMDB copies within one read transaction while writers go on."""
        self._env.copy(str(directory), compact=True)

    def close(self) -> None:
        self._env.close()
