"""The load harness counts the servers' page faults that read from disk (/proc)."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from jpki_va.bench.loadgen import major_faults

PAGES = 64


def _filesystem(path: Path) -> str:
    """The type of the filesystem `path` is on (the longest mount point above it)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if str(path).startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fstype
    return kind


def test_a_mapped_file_the_page_cache_dropped_faults_from_disk(tmp_path: Path) -> None:
    if _filesystem(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("the temporary directory is in memory: nothing is read from a disk")
    path = tmp_path / "mapped"
    page = mmap.PAGESIZE
    with path.open("wb") as f:
        f.write(os.urandom(PAGES * page))
        f.flush()
        os.fsync(f.fileno())  # clean pages, which the kernel may drop on advice
    with path.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            before = major_faults([os.getpid()])
            for offset in range(0, PAGES * page, page):
                mapped[offset]  # the read is the point: it faults the page in
            after = major_faults([os.getpid()])
    # Read-ahead may bring several pages in on one fault: at least one, at most each.
    assert 1 <= after - before <= PAGES


def test_a_process_that_is_gone_counts_nothing() -> None:
    assert major_faults([2**22 + 12345]) == 0
