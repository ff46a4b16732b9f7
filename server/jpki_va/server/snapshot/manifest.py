"""The snapshot contract (DESIGN §3): file names, the manifest and what it promises."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from jpki_va.core.domain import CertKind
from jpki_va.core.oids import ARC
from jpki_va.server.law.issuer_compromise import Compromise, CompromiseNature
from jpki_va.server.model.registry_values import Scope

FORMAT = "jpki-va-snapshot/1"


MANIFEST = "manifest.json"


SIGNATURE = "manifest.sig"


SIGNER_CERT = "signer.pem"


ISSUERS = "issuers.pem"


RECORDS = "records.bin"


EVENTS = "events.bin"


LINKS = "links.bin"


SIGNING_RECORDS = "signing_records.jsonl"


CONSENTS = "consents.jsonl"


ARL = "arl.crl"


# The public announcement of issuer compromises (第15条第3項): CMS SignedData, DER.
ANNOUNCEMENT = "announcement.p7m"


VERIFIERS = "verifiers.json"  # the verifier registry: who may receive what (DESIGN §7)


PREFIX = "snap-"


def snapshot_dirname(sequence: int) -> str:
    return f"{PREFIX}{sequence:012d}"


def snapshot_sequence(path: Path) -> int | None:
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def crl_relpath(kind: CertKind, issuer_key_id: bytes, partition: str, *, delta: bool) -> str:
    suffix = "delta.crl" if delta else "crl"
    return f"crls/{kind.slug}/{issuer_key_id.hex()[:16]}/{partition}.{suffix}"


class SnapshotRejected(Exception):
    """A snapshot failed verification; nothing from it may be ingested."""


@dataclass(frozen=True)
class CrlInfo:
    file: str
    kind: CertKind
    issuer_key_id: bytes
    partition: str
    number: int
    this_update: datetime
    next_update: datetime
    delta_base: int | None

    @property
    def scope(self) -> Scope:
        return self.kind, self.issuer_key_id, self.partition

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kind": self.kind.name,
            "issuer_key_id": self.issuer_key_id.hex(),
            "partition": self.partition,
            "number": self.number,
            "this_update": self.this_update.isoformat(),
            "next_update": self.next_update.isoformat(),
            "delta_base": self.delta_base,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CrlInfo:
        return cls(
            file=str(data["file"]),
            kind=CertKind[data["kind"]],
            issuer_key_id=bytes.fromhex(data["issuer_key_id"]),
            partition=str(data["partition"]),
            number=int(data["number"]),
            this_update=datetime.fromisoformat(data["this_update"]),
            next_update=datetime.fromisoformat(data["next_update"]),
            delta_base=None if data["delta_base"] is None else int(data["delta_base"]),
        )


def compromise_to_json(c: Compromise) -> dict[str, Any]:
    out = {"key_id": c.key_id.hex(), "kind": c.kind.name, "time": c.time.isoformat()}
    if c.nature is not None:
        out["nature"] = c.nature.name
    return out


def compromise_from_json(data: dict[str, Any]) -> Compromise:
    nature = data.get("nature")  # absent: not said, or written before it was kept
    return Compromise(
        bytes.fromhex(data["key_id"]),
        CertKind[data["kind"]],
        datetime.fromisoformat(data["time"]),
        None if nature is None else CompromiseNature[nature],
    )


@dataclass(frozen=True)
class ArlInfo:
    number: int
    this_update: datetime
    next_update: datetime


@dataclass(frozen=True)
class Manifest:
    type: Literal["full", "delta"]
    sequence: int
    base_sequence: int | None
    created_at: datetime
    event_sequence: int  # the last registry loss event this snapshot reflects
    files: dict[str, str]  # relative path -> SHA-256 hex
    crls: list[CrlInfo]
    issuer_key_ids: list[bytes]  # order gives the issuer ordinals used in records
    record_count: int
    previous_sequence: int | None = None  # delta: the snapshot this one follows
    # Announced issuer compromises (第15条第3項), each also on the root's ARL.
    compromises: list[Compromise] = field(default_factory=list)
    arl: ArlInfo | None = None
    # Full snapshots: an empty delta CRL per scope, issued with the full CRL under the
    # same number (RFC 5280 §5.2.3), so the certificates' freshestCRL always answers.
    empty_deltas: list[CrlInfo] = field(default_factory=list)
    # The private OID arc the CRLs were signed under (jpki_va.core.oids): a reader
    # under another arc would not find the loss causes.
    oid_arc: str = ARC

    def to_bytes(self) -> bytes:
        data = {
            "format": FORMAT,
            "type": self.type,
            "sequence": self.sequence,
            "base_sequence": self.base_sequence,
            "previous_sequence": self.previous_sequence,
            "created_at": self.created_at.isoformat(),
            "event_sequence": self.event_sequence,
            "files": dict(sorted(self.files.items())),
            "crls": [c.to_json() for c in self.crls],
            "issuer_key_ids": [k.hex() for k in self.issuer_key_ids],
            "record_count": self.record_count,
            "oid_arc": self.oid_arc,
            "empty_deltas": [c.to_json() for c in self.empty_deltas],
            "compromises": [compromise_to_json(c) for c in self.compromises],
            "arl": None
            if self.arl is None
            else {
                "number": self.arl.number,
                "this_update": self.arl.this_update.isoformat(),
                "next_update": self.arl.next_update.isoformat(),
            },
        }
        return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise SnapshotRejected(f"unknown snapshot format {data.get('format')!r}")
            kind = data["type"]
            if kind not in ("full", "delta"):
                raise SnapshotRejected(f"unknown snapshot type {kind!r}")
            previous = data.get("previous_sequence")
            arl = data.get("arl")
            if kind == "delta" and (data["base_sequence"] is None or previous is None):
                raise SnapshotRejected("a delta snapshot needs its base and previous sequence")
            return cls(
                type=kind,
                sequence=int(data["sequence"]),
                base_sequence=None if data["base_sequence"] is None else int(data["base_sequence"]),
                created_at=datetime.fromisoformat(data["created_at"]),
                event_sequence=int(data["event_sequence"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                crls=[CrlInfo.from_json(c) for c in data["crls"]],
                issuer_key_ids=[bytes.fromhex(k) for k in data["issuer_key_ids"]],
                record_count=int(data["record_count"]),
                previous_sequence=None if previous is None else int(previous),
                compromises=[compromise_from_json(c) for c in data.get("compromises", [])],
                oid_arc=str(data.get("oid_arc", "")),
                empty_deltas=[CrlInfo.from_json(c) for c in data.get("empty_deltas", [])],
                arl=None
                if arl is None
                else ArlInfo(
                    int(arl["number"]),
                    datetime.fromisoformat(arl["this_update"]),
                    datetime.fromisoformat(arl["next_update"]),
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotRejected(f"malformed manifest: {exc}") from exc


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
