"""What a write error means for the responder's state (issue 15, item 9), on real LMDB."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lmdb
import pytest

from jpki_va.server.responder.storage import (
    LOCK_FILE,
    LOCK_FILE_BYTES,
    LOW_SPACE,
    NoSpace,
    free_bytes,
    no_space,
    prepare_lock_file,
)


def test_a_full_lmdb_map_is_no_space_as_a_full_disk_is(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "env"), map_size=64 * 1024)
    try:
        with pytest.raises(lmdb.MapFullError) as info, env.begin(write=True) as txn:
            for i in range(10_000):
                txn.put(i.to_bytes(4, "big"), b"x" * 100)
    finally:
        env.close()
    fault = no_space(info.value, tmp_path)
    assert isinstance(fault, NoSpace)
    assert "no space left in the LMDB map (MDB_MAP_FULL)" in str(fault)


def test_enospc_is_no_space_and_eio_only_on_a_nearly_full_disk(tmp_path: Path) -> None:
    assert free_bytes(tmp_path) > LOW_SPACE  # the test's own disk has room
    full = no_space(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), tmp_path)
    assert full is not None and str(full).startswith("no space left on device")
    assert no_space(lmdb.Error(f"mdb_put: {os.strerror(errno.ENOSPC)}"), tmp_path) is not None
    # With room to spare an I/O error is a fault of its own, not a full disk.
    assert no_space(lmdb.Error(f"mdb_txn_commit: {os.strerror(errno.EIO)}"), tmp_path) is None
    assert no_space(ValueError("not a write error"), tmp_path) is None


def test_the_lock_file_is_allocated_before_lmdb_and_only_for_a_new_environment(
    tmp_path: Path,
) -> None:
    prepare_lock_file(tmp_path)
    lock = tmp_path / LOCK_FILE
    assert lock.stat().st_size == LOCK_FILE_BYTES
    assert lock.stat().st_blocks * 512 >= LOCK_FILE_BYTES  # allocated, not a sparse hole
    writer = lmdb.open(str(tmp_path), map_size=1 << 20)
    with writer.begin(write=True) as txn:
        txn.put(b"k", b"v")
    writer.close()
    reader = lmdb.open(str(tmp_path), readonly=True, lock=True, map_size=1 << 20)
    with reader.begin() as txn:
        assert txn.get(b"k") == b"v"
    reader.close()
    assert lock.stat().st_size == LOCK_FILE_BYTES  # LMDB kept it as it was
    with pytest.raises(FileExistsError):  # never resized under an open environment
        prepare_lock_file(tmp_path)
