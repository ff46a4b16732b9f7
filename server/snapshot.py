"""Snapshots: the only thing the signer and the responder share (DESIGN §3).

A snapshot is a directory written under a temporary name and renamed into place,
never changed after. `manifest.json` lists every other file with its SHA-256 and
says what the snapshot is; `manifest.sig` is the snapshot key's signature over the
manifest's bytes; `signer.pem` is that key's certificate, issued by the root.

A full snapshot (`type: full`) holds everything in retention; a delta (`type:
delta`, `base_sequence` = its full snapshot, `previous_sequence` = the snapshot it
follows) holds what changed since `previous_sequence`, except its delta CRLs, which
are cumulative since the base full CRL of their partition (RFC 5280 §5.2.4).

Files:

* `issuers.pem`: every issuing-CA generation; `records.bin`: issued certificates
  (records.py; in a delta, those issued since the previous snapshot).
* `crls/<kind>/<key id>/<partition>.crl` (full) or `.delta.crl` (delta), signed by
  the generation; none for a compromised generation, whose key is not used again.
* `arl.crl` (full snapshots with compromises): the root's authority revocation list.
* `verifiers.json` (full and delta snapshots): the whole verifier registry.
* `events.bin` (snapshot_data.py): loss events in registry order, the header line
  `JPKIVA-EVENTS/1` and then 93-byte little-endian rows: sequence (u64), record key
  (21 B), partition (u32, the municipality code), issuer key id (20 B), loss time and
  `recorded_at` (i64 microseconds since the epoch, UTC; `recorded_at` is the registry
  commit time), cause (u8 LossCause), reason (u8 CRLReason), then for a cascaded loss
  the card certificate's record key (21 B) and cause (u8), all zero otherwise.
  Sequences strictly increase.
* JSON lines (UTF-8, one object per line; serials are upper-case hex):
  - `signing_records.jsonl`: `{"kind", "serial", "name", "address", "birth_date",
    "sex"}` of signing certificates whose holder consented to at least one verifier
    (never the resident code).
  - `consents.jsonl`: `{"kind", "serial", "verifier", "granted"}`; in a full
    snapshot every line grants; in a delta `granted: false` withdraws.
* `links.bin` (snapshot_data.py): the correspondences, fixed-width rows (from key, to
  key, LinkType, direction) strictly increasing; each link twice, once from each end.
  A link's `a` is the card certificate, or the old one for a renewal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from server.clock import Clock
from server.domain import OID_SNAPSHOT_SIGNING, CertKind, Verifier
from server.law.issuer_compromise import Compromise
from server.profiles import key_id
from server.records import write_records
from server.registry import LossEvent
from server.snapshot_data import write_event_rows, write_link_rows

log = logging.getLogger(__name__)

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
    return {"key_id": c.key_id.hex(), "kind": c.kind.name, "time": c.time.isoformat()}


def compromise_from_json(data: dict[str, Any]) -> Compromise:
    return Compromise(
        bytes.fromhex(data["key_id"]), CertKind[data["kind"]], datetime.fromisoformat(data["time"])
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


def _sign(key: CertificateIssuerPrivateKeyTypes, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise TypeError(f"unsupported snapshot key {type(key).__name__}")


def _verify(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise InvalidSignature(f"unsupported snapshot key {type(public).__name__}")


class SnapshotBuilder:
    """Collects the files of one snapshot in a temporary directory."""

    def __init__(self, root: Path, sequence: int) -> None:
        self.sequence = sequence
        self._root = root
        self._dir = Path(tempfile.mkdtemp(prefix=f".tmp-{sequence}-", dir=root))
        self._files: dict[str, str] = {}
        self._crls: list[CrlInfo] = []
        self._record_count = 0
        self._arl: ArlInfo | None = None

    def _add(self, relpath: str, data: bytes) -> None:
        path = self._dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self._files[relpath] = hashlib.sha256(data).hexdigest()

    def add_issuers(self, certs: list[x509.Certificate]) -> None:
        self._add(ISSUERS, b"".join(c.public_bytes(Encoding.PEM) for c in certs))

    def add_verifiers(self, verifiers: list[Verifier]) -> None:
        data = [v.to_json() for v in sorted(verifiers, key=lambda v: v.id)]
        self._add(VERIFIERS, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")

    def add_records(self, records: Iterable[bytes]) -> int:
        path = self._dir / RECORDS
        with path.open("wb") as f:
            self._record_count = write_records(f, records)
        self._files[RECORDS] = _sha256_file(path)
        return self._record_count

    def add_crl_der(self, info: CrlInfo, der: bytes) -> None:
        """A CRL already encoded and signed (bulk writers); `info` says what it is."""
        self._add(info.file, der)
        self._crls.append(info)

    def add_jsonl(self, relpath: str, lines: Iterable[dict[str, Any]]) -> int:
        """A JSON-lines file; returns how many lines."""
        path = self._dir / relpath
        count = 0
        with path.open("w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":"), sort_keys=True))
                f.write("\n")
                count += 1
        self._files[relpath] = _sha256_file(path)
        return count

    def add_links(self, rows: Iterable[bytes]) -> int:
        """The links file from rows of snapshot_data.link_rows, in increasing order."""
        path = self._dir / LINKS
        with path.open("wb") as f:
            count = write_link_rows(f, rows)
        self._files[LINKS] = _sha256_file(path)
        return count

    def add_events(self, events: Iterable[LossEvent]) -> int:
        """The loss events file from events in registry (sequence) order."""
        path = self._dir / EVENTS
        with path.open("wb") as f:
            count = write_event_rows(f, events)
        self._files[EVENTS] = _sha256_file(path)
        return count

    def add_arl(self, arl: x509.CertificateRevocationList, number: int) -> None:
        self._add(ARL, arl.public_bytes(Encoding.DER))
        assert arl.next_update_utc is not None
        self._arl = ArlInfo(number, arl.last_update_utc, arl.next_update_utc)

    def add_crl(
        self,
        kind: CertKind,
        partition: str,
        crl: x509.CertificateRevocationList,
        number: int,
        delta_base: int | None = None,
    ) -> CrlInfo:
        issuer_key_id = crl.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
        assert issuer_key_id is not None
        relpath = crl_relpath(kind, issuer_key_id, partition, delta=delta_base is not None)
        self._add(relpath, crl.public_bytes(Encoding.DER))
        assert crl.next_update_utc is not None
        info = CrlInfo(
            file=relpath,
            kind=kind,
            issuer_key_id=issuer_key_id,
            partition=partition,
            number=number,
            this_update=crl.last_update_utc,
            next_update=crl.next_update_utc,
            delta_base=delta_base,
        )
        self._crls.append(info)
        return info

    def commit(
        self,
        *,
        type: Literal["full", "delta"],
        base_sequence: int | None,
        created_at: datetime,
        event_sequence: int,
        issuer_key_ids: list[bytes],
        signing_key: CertificateIssuerPrivateKeyTypes,
        signer_cert: x509.Certificate,
        previous_sequence: int | None = None,
        compromises: list[Compromise] | None = None,
    ) -> tuple[Path, Manifest]:
        manifest = Manifest(
            type=type,
            sequence=self.sequence,
            base_sequence=base_sequence,
            created_at=created_at,
            event_sequence=event_sequence,
            files=dict(self._files),
            crls=list(self._crls),
            issuer_key_ids=issuer_key_ids,
            record_count=self._record_count,
            previous_sequence=previous_sequence,
            compromises=list(compromises or []),
            arl=self._arl,
        )
        raw = manifest.to_bytes()
        (self._dir / MANIFEST).write_bytes(raw)
        (self._dir / SIGNATURE).write_bytes(_sign(signing_key, raw))
        (self._dir / SIGNER_CERT).write_bytes(signer_cert.public_bytes(Encoding.PEM))
        for path in self._dir.rglob("*"):
            if path.is_file():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
        self._dir.chmod(0o755)
        final = self._root / snapshot_dirname(self.sequence)
        # rename is atomic: a reader sees no snapshot or a whole one.
        self._dir.rename(final)
        dirfd = os.open(self._root, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        return final, manifest

    def abort(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass(frozen=True)
class VerifiedCrl:
    info: CrlInfo
    crl: x509.CertificateRevocationList


@dataclass(frozen=True)
class VerifiedSnapshot:
    path: Path
    manifest: Manifest
    issuers: list[x509.Certificate]  # in manifest.issuer_key_ids order
    crls: list[VerifiedCrl]

    @property
    def sequence(self) -> int:
        return self.manifest.sequence

    def verifiers(self) -> list[Verifier]:
        """The verifier registry it carries; none in a snapshot without the file."""
        if VERIFIERS not in self.manifest.files:
            return []
        raw = (self.path / VERIFIERS).read_bytes()
        if hashlib.sha256(raw).hexdigest() != self.manifest.files[VERIFIERS]:
            raise SnapshotRejected(f"{VERIFIERS} changed after verification")
        try:
            return [Verifier.from_json(v) for v in json.loads(raw)]
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotRejected(f"malformed {VERIFIERS}: {exc!r}") from exc


class SnapshotVerifier:
    """Checks a snapshot against the trust anchors before anything is ingested.

    The manifest must be signed by a snapshot-signer certificate issued by a trust
    anchor; every file must match its hash and no unlisted file may be present;
    every issuer must be issued by a trust anchor; every CRL must be signed by the
    issuer generation its authority key identifier names.
    """

    def __init__(self, trust_anchors: list[x509.Certificate], clock: Clock) -> None:
        if not trust_anchors:
            raise ValueError("at least one trust anchor is needed")
        self._anchors = trust_anchors
        self._clock = clock

    def _anchor_for(self, cert: x509.Certificate) -> x509.Certificate:
        for anchor in self._anchors:
            try:
                cert.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return anchor
        raise SnapshotRejected(f"{cert.subject.rfc4514_string()} is not issued by a trust anchor")

    def verify(self, path: Path) -> VerifiedSnapshot:
        try:
            raw = (path / MANIFEST).read_bytes()
            signature = (path / SIGNATURE).read_bytes()
            signer = x509.load_pem_x509_certificate((path / SIGNER_CERT).read_bytes())
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"{path.name}: unreadable manifest or signer: {exc}") from exc
        self._check_signer(signer)
        try:
            _verify(signer, signature, raw)
        except InvalidSignature:
            raise SnapshotRejected(f"{path.name}: manifest signature does not verify") from None
        manifest = Manifest.from_bytes(raw)
        if snapshot_sequence(path) not in (None, manifest.sequence):
            raise SnapshotRejected(f"{path.name}: directory name and manifest sequence differ")
        self._check_files(path, manifest)
        issuers = self._check_issuers(path, manifest)
        by_key_id = {key_id(c.public_key()): c for c in issuers}
        crls = [self._check_crl(path, info, by_key_id) for info in manifest.crls]
        self._check_compromises(path, manifest, by_key_id)
        return VerifiedSnapshot(path=path, manifest=manifest, issuers=issuers, crls=crls)

    def _check_compromises(
        self, path: Path, manifest: Manifest, issuers: dict[bytes, x509.Certificate]
    ) -> None:
        """Every announced compromise must be on the root's ARL: the root vouches for it."""
        if not manifest.compromises:
            return
        if manifest.arl is None or ARL not in manifest.files:
            raise SnapshotRejected(f"{path.name}: compromises announced without an ARL")
        try:
            arl = x509.load_der_x509_crl((path / ARL).read_bytes())
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"{path.name}: unreadable ARL: {exc}") from exc
        anchor = next(
            (
                a
                for a in self._anchors
                if a.subject == arl.issuer and arl.is_signature_valid(a.public_key())  # type: ignore[arg-type]
            ),
            None,
        )
        if anchor is None:
            raise SnapshotRejected(f"{path.name}: the ARL is not signed by a trust anchor")
        number = arl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        if number != manifest.arl.number or arl.last_update_utc != manifest.arl.this_update:
            raise SnapshotRejected(f"{path.name}: ARL number or time differs from the manifest")
        for compromise in manifest.compromises:
            cert = issuers.get(compromise.key_id)
            if cert is None:
                raise SnapshotRejected(f"compromised issuer {compromise.key_id.hex()} not listed")
            entry = arl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is None or entry.revocation_date_utc != compromise.time:
                raise SnapshotRejected(
                    f"{path.name}: compromise of {compromise.key_id.hex()} is not on the ARL"
                )

    def _check_signer(self, signer: x509.Certificate) -> None:
        self._anchor_for(signer)
        try:
            eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise SnapshotRejected("snapshot signer certificate has no EKU") from None
        if OID_SNAPSHOT_SIGNING not in eku:
            raise SnapshotRejected("snapshot signer certificate is not for snapshot signing")
        now = self._clock.now()
        if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
            raise SnapshotRejected("snapshot signer certificate is not valid now")

    def _check_files(self, path: Path, manifest: Manifest) -> None:
        present = {
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and p.name not in (MANIFEST, SIGNATURE, SIGNER_CERT)
        }
        listed = set(manifest.files)
        if present != listed:
            extra = sorted(present - listed)
            missing = sorted(listed - present)
            raise SnapshotRejected(
                f"{path.name}: files differ from manifest (unlisted {extra}, missing {missing})"
            )
        for rel, expected in manifest.files.items():
            if ".." in Path(rel).parts:
                raise SnapshotRejected(f"{path.name}: path {rel!r} escapes the snapshot")
            if _sha256_file(path / rel) != expected:
                raise SnapshotRejected(f"{path.name}: {rel} does not match its SHA-256")

    def _check_issuers(self, path: Path, manifest: Manifest) -> list[x509.Certificate]:
        try:
            certs = x509.load_pem_x509_certificates((path / ISSUERS).read_bytes())
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"{path.name}: unreadable issuers: {exc}") from exc
        by_key_id = {key_id(c.public_key()): c for c in certs}
        ordered = []
        for kid in manifest.issuer_key_ids:
            cert = by_key_id.get(kid)
            if cert is None:
                raise SnapshotRejected(f"{path.name}: issuer {kid.hex()} missing from issuers")
            self._anchor_for(cert)
            ordered.append(cert)
        return ordered

    def _check_crl(
        self, path: Path, info: CrlInfo, issuers: dict[bytes, x509.Certificate]
    ) -> VerifiedCrl:
        try:
            crl = x509.load_der_x509_crl((path / info.file).read_bytes())
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"{path.name}: unreadable CRL {info.file}: {exc}") from exc
        issuer = issuers.get(info.issuer_key_id)
        if issuer is None:
            raise SnapshotRejected(f"{info.file}: issuer {info.issuer_key_id.hex()} not listed")
        try:
            aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound as exc:
            raise SnapshotRejected(f"{info.file}: missing CRL extension: {exc}") from exc
        if aki.key_identifier != info.issuer_key_id or crl.issuer != issuer.subject:
            raise SnapshotRejected(f"{info.file}: CRL issuer does not match the manifest")
        if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise SnapshotRejected(f"{info.file}: CRL signature does not verify")
        if (
            number != info.number
            or crl.last_update_utc != info.this_update
            or crl.next_update_utc != info.next_update
        ):
            raise SnapshotRejected(f"{info.file}: CRL number or times differ from the manifest")
        try:
            delta_base: int | None = crl.extensions.get_extension_for_class(
                x509.DeltaCRLIndicator
            ).value.crl_number
        except x509.ExtensionNotFound:
            delta_base = None
        if delta_base != info.delta_base:
            raise SnapshotRejected(f"{info.file}: delta CRL indicator differs from the manifest")
        return VerifiedCrl(info=info, crl=crl)
