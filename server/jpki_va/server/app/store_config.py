"""The snapshot store a role uses: a local directory, or S3-compatible object storage."""

from __future__ import annotations

from pathlib import Path

from jpki_va.server.app.config import ConfigError, check_store_url
from jpki_va.server.snapshot.store import LocalStore, SnapshotStore


def open_store(url: str | None, local: Path | None) -> SnapshotStore:
    """The store `url` names (s3://BUCKET[/PREFIX]), else the directory `local`."""
    if url is None:
        if local is None:
            raise ConfigError("no snapshot store: a directory or a --store URL is needed")
        return LocalStore(local)
    _, bucket, prefix = check_store_url(url)
    # Imported here: boto3 is loaded only by roles that use object storage.
    from jpki_va.server.snapshot.s3_store import S3Store  # noqa: PLC0415

    return S3Store(bucket, prefix)
