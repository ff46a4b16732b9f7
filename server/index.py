"""The responder's LMDB index: built from a verified snapshot, read by the workers.

One environment per full snapshot, built in its own directory with sorted
`append=True` writes and published by an atomic flip of the `current` symlink.
The status of (kind, serial) is one `get` in the `status` database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from server.domain import CertKind, StatusRecord, Verifier, record_key
from server.profiles import crl_entry_cause, crl_entry_reason, key_id
from server.records import (
    pack_value,
    partition_text,
    read_records,
    unpack_value,
)
from server.snapshot import RECORDS as RECORDS_FILE
from server.snapshot import SnapshotRejected, VerifiedSnapshot

log = logging.getLogger(__name__)

CURRENT = "current"
_MAP_SIZE = 1 << 40  # address space only; the file grows as needed
_DBS = (b"status", b"issuers", b"meta")


def index_dirname(sequence: int) -> str:
    return f"idx-{sequence:012d}"


def issuer_lookup_keys(cert: x509.Certificate) -> list[bytes]:
    """RFC 6960 CertID (issuerNameHash, issuerKeyHash) keys for SHA-1 and SHA-256."""
    name = cert.subject.public_bytes()
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        key_bits = public.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        key_bits = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    else:
        raise TypeError("unsupported issuer key")
    return [
        alg.encode() + b":" + hashlib.new(alg, name).digest() + hashlib.new(alg, key_bits).digest()
        for alg in ("sha1", "sha256")
    ]


@dataclass(frozen=True)
class CrlTimes:
    number: int
    this_update: datetime
    next_update: datetime


class VerifierTable:
    """The verifier registry of one index: by id and by client-certificate fingerprint."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.by_id: dict[str, Verifier] = {}
        self.by_fingerprint: dict[bytes, Verifier] = {}
        for entry in entries:
            verifier = Verifier.from_json(entry)
            self.by_id[verifier.id] = verifier
            for fingerprint in verifier.cert_fingerprints:
                self.by_fingerprint[fingerprint] = verifier


@dataclass(frozen=True)
class IssuerEntry:
    kind: CertKind
    key_id: bytes
    certificate: x509.Certificate
    active: bool = False  # the newest generation of its kind


def build_index(snapshot: VerifiedSnapshot, index_root: Path) -> Path:
    """Build the index of a verified full snapshot in a new directory; returns it.

    The directory is built under a temporary name and renamed when complete, so a
    crash leaves no half-written index behind a real name.
    """
    manifest = snapshot.manifest
    if manifest.type != "full":
        raise SnapshotRejected("only a full snapshot builds a new index")
    index_root.mkdir(parents=True, exist_ok=True)
    final = index_root / index_dirname(manifest.sequence)
    tmp = index_root / f".build-{index_dirname(manifest.sequence)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _build(snapshot, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _revocations(snapshot: VerifiedSnapshot) -> tuple[dict[bytes, tuple[int, int, int]], set[Any]]:
    revoked: dict[bytes, tuple[int, int, int]] = {}
    scopes = set()
    for vc in snapshot.crls:
        info = vc.info
        scopes.add((info.kind, info.issuer_key_id, info.partition))
        for entry in vc.crl:
            cause = crl_entry_cause(entry)
            if cause is None:
                raise SnapshotRejected(f"{info.file}: CRL entry without a loss cause")
            key = record_key(info.kind, entry.serial_number)
            revoked[key] = (
                int(entry.revocation_date_utc.timestamp()),
                int(cause),
                int(crl_entry_reason(entry)),
            )
    return revoked, scopes


def _build(snapshot: VerifiedSnapshot, path: Path) -> None:
    manifest = snapshot.manifest
    revoked, scopes = _revocations(snapshot)
    key_ids = manifest.issuer_key_ids
    kinds = {c.info.issuer_key_id: c.info.kind for c in snapshot.crls}
    env = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=len(_DBS), sync=False, metasync=False)
    try:
        status_db, issuers_db, meta_db = (env.open_db(name) for name in _DBS)
        records_path = snapshot.path / RECORDS_FILE
        digest = hashlib.sha256()
        with records_path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            digest.update(m)
            # The verifier hashed this file already; hashing what we read closes the
            # window in which it could have changed in between.
            if digest.hexdigest() != manifest.files[RECORDS_FILE]:
                raise SnapshotRejected(f"{RECORDS_FILE} changed after verification")
            uncovered: list[bytes] = []

            def items() -> Any:
                for key, nb, na, part, ordinal in read_records(memoryview(m)):
                    kind = CertKind(key[0])
                    if (kind, key_ids[ordinal], partition_text(part)) not in scopes:
                        uncovered.append(key)
                    yield key, pack_value(nb, na, part, ordinal, *revoked.pop(key, (0, 0, 0)))

            with env.begin(write=True) as txn:
                count = txn.cursor(db=status_db).putmulti(items(), append=True)[1]
        if uncovered:
            raise SnapshotRejected(f"{len(uncovered)} records are in no CRL's scope")
        if revoked:
            raise SnapshotRejected(f"{len(revoked)} CRL entries name certificates never issued")
        if count != manifest.record_count:
            raise SnapshotRejected("record count differs from the manifest")
        with env.begin(write=True) as txn:
            for ordinal, (kid, cert) in enumerate(zip(key_ids, snapshot.issuers, strict=True)):
                kind = kinds.get(kid)
                if kind is None:
                    continue  # a generation with nothing left to answer for
                for lookup in issuer_lookup_keys(cert):
                    txn.put(lookup, bytes([kind, ordinal]), db=issuers_db)
            meta = {
                "sequence": manifest.sequence,
                "created_at": manifest.created_at.isoformat(),
                "event_sequence": manifest.event_sequence,
                "issuer_key_ids": [k.hex() for k in key_ids],
                "issuer_kinds": {k.hex(): v.name for k, v in kinds.items()},
                "crls": [c.info.to_json() for c in snapshot.crls],
            }
            txn.put(b"manifest", json.dumps(meta).encode(), db=meta_db)
            txn.put(
                b"issuers",
                b"".join(c.public_bytes(Encoding.PEM) for c in snapshot.issuers),
                db=meta_db,
            )
            verifiers = [v.to_json() for v in snapshot.verifiers()]
            txn.put(b"verifiers", json.dumps(verifiers).encode(), db=meta_db)
        env.sync(True)
    finally:
        env.close()


def publish_index(index_root: Path, built: Path) -> None:
    """Point `current` at a built index: one atomic rename of a symlink."""
    tmp = index_root / f".{CURRENT}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(built.name)
    tmp.replace(index_root / CURRENT)
    dirfd = os.open(index_root, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def current_index(index_root: Path) -> Path | None:
    try:
        return index_root / (index_root / CURRENT).readlink()
    except FileNotFoundError:
        return None


class Index:
    """A read-only handle on one index environment. Open it after fork."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._env = lmdb.open(
            str(path), readonly=True, max_dbs=len(_DBS), lock=True, map_size=_MAP_SIZE
        )
        self._status, issuers_db, meta_db = (self._env.open_db(name, create=False) for name in _DBS)
        self._issuers_db = issuers_db
        with self._env.begin() as txn:
            raw_meta = txn.get(b"manifest", db=meta_db)
            issuer_pem = txn.get(b"issuers", db=meta_db)
            raw_verifiers = txn.get(b"verifiers", db=meta_db)
        if raw_meta is None or issuer_pem is None:
            raise ValueError(f"{path} is not a complete index")
        meta = json.loads(bytes(raw_meta))
        self.sequence: int = meta["sequence"]
        self.created_at = datetime.fromisoformat(meta["created_at"])
        self.event_sequence: int = meta["event_sequence"]
        self.issuer_key_ids = [bytes.fromhex(k) for k in meta["issuer_key_ids"]]
        kinds = {bytes.fromhex(k): CertKind[v] for k, v in meta["issuer_kinds"].items()}
        self.issuers: dict[bytes, IssuerEntry] = {}
        for cert in x509.load_pem_x509_certificates(bytes(issuer_pem)):
            kid = key_id(cert.public_key())
            if kid in kinds:
                self.issuers[kid] = IssuerEntry(kinds[kid], kid, cert)
        for kind in CertKind:
            generations = [e for e in self.issuers.values() if e.kind is kind]
            if generations:
                newest = max(generations, key=lambda e: e.certificate.not_valid_before_utc)
                self.issuers[newest.key_id] = replace(newest, active=True)
        self._crl_times: dict[tuple[CertKind, bytes, str], CrlTimes] = {}
        for c in meta["crls"]:
            times = CrlTimes(
                number=c["number"],
                this_update=datetime.fromisoformat(c["this_update"]),
                next_update=datetime.fromisoformat(c["next_update"]),
            )
            scope = (CertKind[c["kind"]], bytes.fromhex(c["issuer_key_id"]), c["partition"])
            self._crl_times[scope] = times
        self.verifiers = VerifierTable(
            [] if raw_verifiers is None else json.loads(bytes(raw_verifiers))
        )
        self.next_update = min(
            (t.next_update for t in self._crl_times.values()),
            default=datetime.fromtimestamp(0, UTC),
        )
        #: The latest nextUpdate any answer from this index carries.
        self.latest_next_update = max(
            (t.next_update for t in self._crl_times.values()),
            default=datetime.fromtimestamp(0, UTC),
        )

    def get(self, kind: CertKind, serial: int) -> StatusRecord | None:
        with self._env.begin(db=self._status) as txn:
            raw = txn.get(record_key(kind, serial))
        if raw is None:
            return None
        return unpack_value(record_key(kind, serial), bytes(raw), self.issuer_key_ids)

    def issuer_by_hash(
        self, algorithm: str, name_hash: bytes, key_hash: bytes
    ) -> IssuerEntry | None:
        with self._env.begin(db=self._issuers_db) as txn:
            raw = txn.get(algorithm.encode() + b":" + name_hash + key_hash)
        if raw is None:
            return None
        return self.issuers.get(self.issuer_key_ids[raw[1]])

    @property
    def current_crls(self) -> dict[tuple[CertKind, bytes, str], CrlTimes]:
        """(kind, issuer key id, partition) -> the CRL this index was built from."""
        return dict(self._crl_times)

    def crl_times(self, record: StatusRecord) -> CrlTimes | None:
        return self._crl_times.get((record.kind, record.issuer_key_id, record.partition))

    def close(self) -> None:
        self._env.close()
