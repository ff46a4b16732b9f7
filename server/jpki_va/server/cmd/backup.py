"""`jpki-va backup create|list|restore`: the registry's backups in the object store.

`create` backs up a signer's registry on demand (the signer may be running: LMDB
copies within one read transaction); the signer also does so every
`--backup-interval`. `restore` puts a backup into an empty data directory for a new
signer. The store's endpoint, credentials and CA come from the standard AWS
environment or config files, never argv.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from jpki_va.core.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_codes_epilog, fail, warn
from jpki_va.server.cmd.signer_client import SubParsers

if TYPE_CHECKING:
    from jpki_va.server.signer.registry_backup import BackupStore
    from jpki_va.server.snapshot.store import SnapshotStore


def add_backup_commands(sub: SubParsers) -> None:
    backup = sub.add_parser(
        "backup",
        help="the signer's registry: back it up to the object store, list, restore",
        epilog=exit_codes_epilog(EXIT_OK, EXIT_FAILED, EXIT_USAGE),
    )
    commands = backup.add_subparsers(dest="backup_command", required=True, metavar="ACTION")
    create = commands.add_parser("create", help="back up a signer's registry now")
    create.add_argument("--data-dir", required=True, type=Path, help="the signer's data directory")
    _store(create)
    create.set_defaults(func=run_create)
    listing = commands.add_parser("list", help="the backups in the store, oldest first")
    _store(listing)
    listing.set_defaults(func=run_list)
    restore = commands.add_parser("restore", help="a backup into a new, empty data directory")
    restore.add_argument("--data-dir", required=True, type=Path, help="the new signer's")
    restore.add_argument("--name", help="this backup (default: the newest)")
    _store(restore)
    restore.set_defaults(func=run_restore)


def _store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="URL", help="s3://BUCKET[/PREFIX]")


def _one_line(
    action: Callable[[argparse.Namespace, BackupStore], int],
) -> Callable[[argparse.Namespace], int]:
    """The store opened for `action`; what goes wrong is one line and an exit code."""

    def run(args: argparse.Namespace) -> int:
        # boto3 and lmdb load here, when a backup command runs.
        from jpki_va.server.app.config import ConfigError  # noqa: PLC0415
        from jpki_va.server.app.store_config import open_store  # noqa: PLC0415
        from jpki_va.server.signer.registry_backup import (  # noqa: PLC0415
            BackupError,
            BackupStore,
        )
        from jpki_va.server.snapshot.store import StoreUnavailable  # noqa: PLC0415

        prog = f"jpki-va backup {args.backup_command}"
        try:
            store = open_store(args.store, None)
            if not isinstance(store, BackupStore):
                raise ConfigError(f"{args.store} keeps no backups")
            return action(args, store)
        except ConfigError as exc:
            fail(prog, str(exc))
            return EXIT_USAGE
        except (BackupError, StoreUnavailable, OSError) as exc:
            fail(prog, str(exc))
            return EXIT_FAILED

    return run


@_one_line
def run_create(args: argparse.Namespace, store: BackupStore) -> int:
    from jpki_va.core.clock import SystemClock  # noqa: PLC0415
    from jpki_va.server.registry.transactions import Registry  # noqa: PLC0415
    from jpki_va.server.signer.registry_backup import (  # noqa: PLC0415
        DATA,
        BackupError,
        backup_registry,
    )

    directory = args.data_dir / "registry"
    if not (directory / DATA).is_file():
        raise BackupError(f"no registry in {args.data_dir}")
    registry = Registry(directory)
    try:
        record = backup_registry(registry, store, SystemClock(), args.data_dir / "backups")
    finally:
        registry.close()
    print(f"{record.name} sha256 {record.sha256} ({record.size} bytes)")
    return EXIT_OK


@_one_line
def run_list(args: argparse.Namespace, store: BackupStore) -> int:
    for name in store.backups():
        print(name)
    return EXIT_OK


@_one_line
def run_restore(args: argparse.Namespace, store: BackupStore) -> int:
    from jpki_va.server.signer.registry_backup import (  # noqa: PLC0415
        losses_published_since,
        restore_registry,
    )

    record = restore_registry(store, args.data_dir / "registry", args.name)
    print(
        f"restored {record.name} (sha256 {record.sha256}, {record.size} bytes, "
        f"snapshot sequence {record.snapshot_sequence}) into {args.data_dir}"
    )
    missing = losses_published_since(record, cast("SnapshotStore", store))
    if missing:
        warn(
            f"jpki-va backup {args.backup_command}",
            f"the store's snapshots hold {missing} loss events recorded after this backup: "
            "re-record them before the restored signer publishes",
        )
    return EXIT_OK
