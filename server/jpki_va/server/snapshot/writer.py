"""Writing a snapshot: files under a temporary name, the signed manifest last.

Every file 0600 and directory 0700 (jpki_va.server.base.private_files): a snapshot
carries signing records (name, address, birth date, sex) and resident-linked data,
read by responders running as the signer's user (README, operations).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.domain import CertKind, Verifier
from jpki_va.server.base.faults import fault_point
from jpki_va.server.base.private_files import (
    DIR_MODE,
    open_private,
    open_private_text,
    private_dir,
    write_private,
)
from jpki_va.server.law.issuer_compromise import Compromise
from jpki_va.server.model.registry_values import LossEvent
from jpki_va.server.snapshot.data_files import write_event_rows, write_link_rows
from jpki_va.server.snapshot.manifest import (
    ANNOUNCEMENT,
    ARL,
    EVENTS,
    ISSUERS,
    LINKS,
    MANIFEST,
    RECORDS,
    SIGNATURE,
    SIGNER_CERT,
    VERIFIERS,
    ArlInfo,
    CrlInfo,
    Manifest,
    _sha256_file,
    crl_relpath,
    snapshot_dirname,
)
from jpki_va.server.snapshot.record_format import write_records

SYNC_THREADS = 16


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _sign(key: CertificateIssuerPrivateKeyTypes, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise TypeError(f"unsupported snapshot key {type(key).__name__}")


_TEMP_PREFIX = ".tmp-"
# SnapshotBuilder's temporary names: the prefix, the sequence, mkdtemp's 8 characters.
_TEMP_NAME = re.compile(rf"{re.escape(_TEMP_PREFIX)}\d+-[a-z0-9_]{{8}}")


def prune_abandoned(root: Path) -> list[str]:
    """Remove the temporary directories of publishes killed midway; their names.

    Only for the one writer of `root` (the signer holding its data directory), before
    it publishes: another writer's snapshot in progress looks the same. Names not of
    SnapshotBuilder's making are left alone.
    """
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        if _TEMP_NAME.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(path.name)
    return removed


def rename_into_place(root: Path, sealed: Path, sequence: int) -> Path:
    """Commit a snapshot sealed under a temporary name in `root`; where it now is.

    rename is atomic: a reader sees no snapshot or a whole one.
    """
    final = root / snapshot_dirname(sequence)
    fault_point("snapshot.manifest-written")
    sealed.rename(final)
    dirfd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return final


class SnapshotBuilder:
    """Collects the files of one snapshot in a temporary directory."""

    def __init__(self, root: Path, sequence: int) -> None:
        self.sequence = sequence
        self._root = root
        self._dir = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{sequence}-", dir=root))
        self._files: dict[str, str] = {}
        self._crls: list[CrlInfo] = []
        self._empty_deltas: list[CrlInfo] = []
        self._record_count = 0
        self._arl: ArlInfo | None = None

    def _add(self, relpath: str, data: bytes) -> None:
        path = self._dir / relpath
        private_dir(path.parent)
        write_private(path, data)
        self._files[relpath] = hashlib.sha256(data).hexdigest()

    def add_issuers(self, certs: list[x509.Certificate]) -> None:
        self._add(ISSUERS, b"".join(c.public_bytes(Encoding.PEM) for c in certs))

    def add_verifiers(self, verifiers: list[Verifier]) -> None:
        data = [v.to_json() for v in sorted(verifiers, key=lambda v: v.id)]
        self._add(VERIFIERS, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")

    def add_records(self, records: Iterable[bytes]) -> int:
        path = self._dir / RECORDS
        with open_private(path) as f:
            self._record_count = write_records(f, records)
        self._files[RECORDS] = _sha256_file(path)
        return self._record_count

    def add_crl_der(self, info: CrlInfo, der: bytes) -> None:
        """A CRL already encoded and signed (bulk writers); `info` says what it is."""
        self._add(info.file, der)
        self._crls.append(info)

    def add_empty_delta_der(self, info: CrlInfo, der: bytes) -> None:
        """A full snapshot's empty delta CRL of a scope (Manifest.empty_deltas)."""
        self._add(info.file, der)
        self._empty_deltas.append(info)

    def add_jsonl(self, relpath: str, lines: Iterable[dict[str, Any]]) -> int:
        """A JSON-lines file; returns how many lines."""
        path = self._dir / relpath
        count = 0
        with open_private_text(path) as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":"), sort_keys=True))
                f.write("\n")
                count += 1
        self._files[relpath] = _sha256_file(path)
        return count

    def add_links(self, rows: Iterable[bytes]) -> int:
        """The links file from rows of data_files.link_rows, in increasing order."""
        with open_private(self.links_path) as f:
            count = write_link_rows(f, rows)
        self.adopt_links()
        return count

    @property
    def links_path(self) -> Path:
        """Where the links file goes, for a writer outside this object (`adopt_links`)."""
        return self._dir / LINKS

    def adopt_links(self) -> None:
        """Take the links file written at `links_path` (by `add_links` or another process)."""
        self._files[LINKS] = _sha256_file(self.links_path)

    def add_events(self, events: Iterable[LossEvent]) -> int:
        """The loss events file from events in registry (sequence) order."""
        path = self._dir / EVENTS
        with open_private(path) as f:
            count = write_event_rows(f, events)
        self._files[EVENTS] = _sha256_file(path)
        return count

    def add_arl(self, arl: x509.CertificateRevocationList, number: int) -> None:
        self._add(ARL, arl.public_bytes(Encoding.DER))
        assert arl.next_update_utc is not None
        self._arl = ArlInfo(number, arl.last_update_utc, arl.next_update_utc)

    def add_announcement(self, signed: bytes) -> None:
        """The public announcement of issuer compromises (CMS, pki/announcement.py)."""
        self._add(ANNOUNCEMENT, signed)

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
        """Seal and publish in one step (for callers that keep no count of sequences)."""
        manifest = self.seal(
            type=type,
            base_sequence=base_sequence,
            created_at=created_at,
            event_sequence=event_sequence,
            issuer_key_ids=issuer_key_ids,
            signing_key=signing_key,
            signer_cert=signer_cert,
            previous_sequence=previous_sequence,
            compromises=compromises,
        )
        return self.publish(), manifest

    def seal(
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
    ) -> Manifest:
        """Write the signed manifest and force every file to disk; still under its
        temporary name, so nobody sees it until :meth:`publish`."""
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
            empty_deltas=list(self._empty_deltas),
        )
        raw = manifest.to_bytes()
        write_private(self._dir / MANIFEST, raw)
        write_private(self._dir / SIGNATURE, _sign(signing_key, raw))
        write_private(self._dir / SIGNER_CERT, signer_cert.public_bytes(Encoding.PEM))
        # At once, not one after another: the file system commits concurrent fsyncs
        # in one journal transaction, so a delta of a hundred CRL files is not a
        # hundred disk flushes in a row (most of a delta's publish time, before).
        files = [p for p in self._dir.rglob("*") if p.is_file()]
        with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
            list(pool.map(_fsync, files))
        self._dir.chmod(DIR_MODE)  # mkdtemp's mode already; said here, where it matters
        return manifest

    @property
    def path(self) -> Path:
        """Where its files are: the temporary directory until it is published."""
        return self._dir

    def publish(self) -> Path:
        """Rename the sealed snapshot into place in the local root; where it now is."""
        # abort() after this withdraws the published snapshot
        self._dir = rename_into_place(self._root, self._dir, self.sequence)
        return self._dir

    def abort(self) -> None:
        """Remove the snapshot: its temporary files, or, once published, the snapshot
        itself (for a caller that could not record its sequence)."""
        shutil.rmtree(self._dir, ignore_errors=True)
