"""The snapshot store in S3-compatible object storage (AWS S3, Ceph RGW, SeaweedFS, MinIO).

Layout under the bucket's prefix: `snapshots/snap-NNNNNNNNNNNN/<file>` for each file of
a snapshot, its `manifest.json` written last (the commit: a sequence is committed when
its manifest exists), `latest` (the pointer: rewritten after every commit, so a
responder that reads it every fraction of a second learns of a snapshot without
listing the bucket), and `backups/` for the registry's backups (signer.registry_backup).

boto3 talks to the store: it takes the endpoint (`AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL`), the credentials and the CA bundle (`AWS_CA_BUNDLE`) from the
standard environment and config files (`AWS_CONFIG_FILE`, `AWS_SHARED_CREDENTIALS_FILE`,
`AWS_PROFILE`, a pod's web identity, an instance role), never from argv; retries with
backoff ("standard" mode) and multipart transfers for large files are its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions

from jpki_va.server.base.faults import fault_point
from jpki_va.server.base.private_files import open_private, private_dir, write_private
from jpki_va.server.snapshot.manifest import (
    MANIFEST,
    SIGNATURE,
    SIGNER_CERT,
    snapshot_dirname,
    snapshot_sequence,
)
from jpki_va.server.snapshot.store import SnapshotIncomplete, StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)
# botocore says at INFO where it found credentials and endpoint, for every client.
for _chatty in ("botocore.credentials", "botocore.configprovider"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

POINTER = "latest"
# The pointer is read several times a second: one quick attempt, no retries; a
# pointer that cannot be read says "cannot tell" and the periodic scan still runs.
POINTER_TIMEOUT = 1.0
PARALLEL = 8  # objects moved at once, per snapshot
ATTEMPTS = 4  # per request, with boto3's backoff between them
TIMEOUT = 10.0  # seconds to connect, and to wait for a read


# A backup's objects: the registry's LMDB file, then its record (the commit).
_BACKUP_DATA = "data.mdb"
_BACKUP_RECORD = "backup.json"


def _failure(exc: Exception, what: str) -> StoreUnavailable:
    """The store's fault as one line that names what was being done."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return StoreUnavailable(
            f"snapshot store: {what}: {error.get('Code', '?')} {error.get('Message', '')}".strip()
        )
    return StoreUnavailable(f"snapshot store unreachable: {what}: {exc}")


def _missing(exc: botocore.exceptions.ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


def _safe_relpath(rel: str) -> str:
    """A manifest's file name, refused when it would leave the snapshot's directory.

    Checked before anything is written: the manifest is not verified yet.
    """
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or ".." in path.parts or str(path) != rel:
        raise StoreUnavailable(f"snapshot store: unsafe file name {rel!r} in a manifest")
    return rel


class S3Store:
    """A snapshot store in one bucket, under one prefix."""

    local_root: Path | None = None

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        parallel: int = PARALLEL,
        client: S3Client | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._parallel = parallel
        self._pointer_client: S3Client | None = client
        self._client: S3Client = client or boto3.session.Session().client(
            "s3",
            config=botocore.config.Config(
                retries={"mode": "standard", "max_attempts": ATTEMPTS},
                connect_timeout=TIMEOUT,
                read_timeout=TIMEOUT,
                max_pool_connections=max(10, parallel),
                # The manifest's SHA-256 guards every file; the newer default checksums
                # (aws-chunked trailers) are not spoken by every S3-compatible store.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    # keys -----------------------------------------------------------------------------
    def _snapshot_prefix(self, sequence: int) -> str:
        return f"{self.prefix}snapshots/{snapshot_dirname(sequence)}/"

    def _key(self, sequence: int, rel: str) -> str:
        return self._snapshot_prefix(sequence) + rel

    def _keys(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            yield from page.get("Contents", [])  # type: ignore[misc]

    def _listed(self, after: int) -> list[int]:
        """Sequences with any object above `after` (committed or not), ascending."""
        root = f"{self.prefix}snapshots/"
        start = f"{root}{snapshot_dirname(after)}/\U0010ffff" if after > 0 else ""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root, Delimiter="/", StartAfter=start
        )
        found = []
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                name = common.get("Prefix", "")[len(root) :].rstrip("/")
                sequence = snapshot_sequence(Path(name))
                if sequence is not None and sequence > after:
                    found.append(sequence)
        return sorted(found)

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _missing(exc):
                return False
            raise
        return True

    # the interface ----------------------------------------------------------------------
    def sequences(self, after: int = 0) -> list[int]:
        try:
            return [s for s in self._listed(after) if self._exists(self._key(s, MANIFEST))]
        except _ERRORS as exc:
            raise _failure(exc, "listing snapshots") from exc

    def upload(self, sequence: int, sealed: Path) -> None:
        files = [p for p in sorted(sealed.rglob("*")) if p.is_file() and p.name != MANIFEST]

        def put(path: Path) -> None:
            rel = path.relative_to(sealed).as_posix()
            self._client.upload_file(str(path), self.bucket, self._key(sequence, rel))

        try:
            with ThreadPoolExecutor(self._parallel, thread_name_prefix="s3-upload") as pool:
                list(pool.map(put, files))
        except _ERRORS as exc:
            raise _failure(exc, f"uploading snapshot {sequence}") from exc

    def commit(self, sequence: int, sealed: Path) -> None:
        fault_point("snapshot.manifest-written")
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(sequence, MANIFEST),
                Body=(sealed / MANIFEST).read_bytes(),
                ContentType="application/json",
            )
        except _ERRORS as exc:
            raise _failure(exc, f"committing snapshot {sequence}") from exc
        self._point(sequence)

    def _point(self, sequence: int) -> None:
        """Move the pointer; a failure leaves readers to find the snapshot by listing."""
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self.prefix + POINTER, Body=str(sequence).encode()
            )
        except _ERRORS as exc:
            log.warning("snapshot %d committed; the store's pointer not moved: %s", sequence, exc)

    def marker(self) -> bytes:
        """The pointer's version (responder.snapshot_notice); b"" when it cannot be read."""
        if self._pointer_client is None:
            self._pointer_client = boto3.session.Session().client(
                "s3",
                config=botocore.config.Config(
                    retries={"mode": "standard", "max_attempts": 1},
                    connect_timeout=POINTER_TIMEOUT,
                    read_timeout=POINTER_TIMEOUT,
                ),
            )
        try:
            head = self._pointer_client.head_object(Bucket=self.bucket, Key=self.prefix + POINTER)
        except _ERRORS:
            return b""
        return f"{head.get('ETag', '')}:{head.get('LastModified', '')}".encode()

    def withdraw(self, sequence: int) -> None:
        try:
            # The manifest first: from then on no reader starts on it.
            self._client.delete_object(Bucket=self.bucket, Key=self._key(sequence, MANIFEST))
            self._delete_prefix(self._snapshot_prefix(sequence))
        except _ERRORS as exc:
            raise _failure(exc, f"removing snapshot {sequence}") from exc

    def _delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; how many there were."""
        batch: list[str] = []
        count = 0
        for obj in self._keys(prefix):
            batch.append(obj["Key"])
            count += 1
            if len(batch) == 1000:  # the most one request may delete
                self._delete(batch)
                batch = []
        if batch:
            self._delete(batch)
        return count

    def _delete(self, keys: list[str]) -> None:
        self._client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )

    def manifest(self, sequence: int) -> bytes:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(sequence, MANIFEST))
            return body["Body"].read()
        except _ERRORS as exc:
            raise _failure(exc, f"reading the manifest of snapshot {sequence}") from exc

    def fingerprint(self, sequence: int) -> str:
        digest = hashlib.sha256()
        try:
            for obj in self._keys(self._snapshot_prefix(sequence)):
                digest.update(f"{obj['Key']}\0{obj.get('ETag')}\0{obj.get('Size')}\n".encode())
        except _ERRORS as exc:
            raise _failure(exc, f"listing snapshot {sequence}") from exc
        return digest.hexdigest()

    def fetch(self, sequence: int, into: Path) -> Path:
        """Download the manifest, then what it lists, with bounded parallelism.

        The manifest read first is the one staged: files are checked against it by
        the verifier, so a snapshot changed meanwhile is refused, not mixed.
        """
        raw = self.manifest(sequence)
        try:
            listed = json.loads(raw)["files"]
            files = [_safe_relpath(str(rel)) for rel in listed]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"snapshot {sequence}: unreadable manifest: {exc}") from exc
        private_dir(into)
        final = into / snapshot_dirname(sequence)
        work = Path(tempfile.mkdtemp(prefix=f".fetch-{sequence}-", dir=into))
        try:
            self._download_all(sequence, [SIGNATURE, SIGNER_CERT, *files], work)
            write_private(work / MANIFEST, raw)
            if final.exists():  # a refused copy, fetched again
                shutil.rmtree(final, ignore_errors=True)
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return final

    def _download_all(self, sequence: int, files: list[str], work: Path) -> None:
        def get(rel: str) -> None:
            target = work / rel
            private_dir(target.parent)
            try:
                with open_private(target) as f:
                    self._client.download_fileobj(self.bucket, self._key(sequence, rel), f)
            except botocore.exceptions.ClientError as exc:
                if _missing(exc):
                    raise SnapshotIncomplete(
                        f"snapshot {sequence} is committed but lacks {rel} (its manifest "
                        "came before its files); asking again at the next poll"
                    ) from exc
                raise

        try:
            with ThreadPoolExecutor(self._parallel, thread_name_prefix="s3-fetch") as pool:
                list(pool.map(get, files))
        except _ERRORS as exc:
            raise _failure(exc, f"fetching snapshot {sequence}") from exc

    # registry backups (signer.registry_backup) ----------------------------------------
    def _backup_key(self, name: str, file: str) -> str:
        return f"{self.prefix}backups/{name}/{file}"

    def put_backup(self, name: str, data: Path, record: bytes) -> None:
        try:
            self._client.upload_file(str(data), self.bucket, self._backup_key(name, _BACKUP_DATA))
            self._client.put_object(
                Bucket=self.bucket, Key=self._backup_key(name, _BACKUP_RECORD), Body=record
            )
        except _ERRORS as exc:
            raise _failure(exc, f"uploading backup {name}") from exc

    def backups(self) -> list[str]:
        root = f"{self.prefix}backups/"
        try:
            names = [
                obj["Key"][len(root) :].split("/", 1)[0]
                for obj in self._keys(root)
                if obj["Key"].endswith(f"/{_BACKUP_RECORD}")
            ]
        except _ERRORS as exc:
            raise _failure(exc, "listing backups") from exc
        return sorted(names)

    def get_backup(self, name: str, data: Path) -> bytes:
        try:
            record = self._client.get_object(
                Bucket=self.bucket, Key=self._backup_key(name, _BACKUP_RECORD)
            )["Body"].read()
            with open_private(data) as f:
                self._client.download_fileobj(self.bucket, self._backup_key(name, _BACKUP_DATA), f)
        except _ERRORS as exc:
            raise _failure(exc, f"fetching backup {name}") from exc
        return record

    def remove_backup(self, name: str) -> None:
        try:
            self._client.delete_object(
                Bucket=self.bucket, Key=self._backup_key(name, _BACKUP_RECORD)
            )
            self._delete_prefix(self._backup_key(name, ""))
        except _ERRORS as exc:
            raise _failure(exc, f"removing backup {name}") from exc

    def clear_abandoned(self) -> list[str]:
        """Snapshots whose files were uploaded but whose manifest never was."""
        removed = []
        try:
            for sequence in self._listed(0):
                # A store with directories (SeaweedFS's filer) may list an emptied one.
                if not self._exists(self._key(sequence, MANIFEST)) and self._delete_prefix(
                    self._snapshot_prefix(sequence)
                ):
                    removed.append(snapshot_dirname(sequence))
        except _ERRORS as exc:
            raise _failure(exc, "removing unfinished uploads") from exc
        return removed
