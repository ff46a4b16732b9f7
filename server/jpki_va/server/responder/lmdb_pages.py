"""A batch of one LMDB database's values read from the environment's file, mapped by
this process, with the batch's lookups walked side by side (`_lmdb_pages.pyx`).

Why: a CheckStream status is one index read of a key drawn from the whole status
table, and LMDB's `get` waits on the tree's cache misses one after another. On the
1 M-holder index a random key cost 1.68 µs of CPU, 1.4 of it waiting for memory (the
bench's `lookup` step); walked side by side, a batch of 100 cost 0.58-0.70.

LMDB's own `get` is the reference, and it answers wherever this reader declines:
without the compiled module, for a file that is not LMDB 0.9's layout on this
machine, for a database with its own order or duplicates, for an empty tree, and for
any page the walk does not recognise (`values` returns None). What it returns is
what `get` returns in the same read transaction: it reads the tree that
transaction's own snapshot roots, and LMDB reuses no page a live reader can reach.

It also reads the id of the environment's last committed write from the file's meta
pages (`last_txn`), so that the index can tell whether a delta has come without
beginning a read transaction on every identification.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import lmdb

try:
    from jpki_va.server.responder import _lmdb_pages
except ImportError:  # no compiler at install: LMDB's get serves
    _lmdb_pages = None  # type: ignore[assignment]

COMPILED = _lmdb_pages is not None

_DATA_FILE = "data.mdb"
# The first meta page: MDB_page's 16-byte header, then MDB_meta's magic and version.
_META = struct.Struct("<QHHHHII")
_META_FLAG = 0x08  # P_META
_MAGIC = 0xBEEFC0DE
_DATA_VERSION = 1  # MDB_DATA_VERSION of LMDB 0.9
# A named database's record in the main database (MDB_db): pad, flags, depth, branch,
# leaf and overflow pages, entries, root.
_TREE = struct.Struct("<IHHQQQQQ")
_NO_ROOT = (1 << 64) - 1  # P_INVALID: the tree is empty


def layout_known(path: Path) -> bool:
    """Whether the environment under `path` is an LMDB 0.9 file this reader can walk."""
    if sys.byteorder != "little" or struct.calcsize("P") != 8:
        return False  # the compiled walk reads native 64-bit little-endian fields
    try:
        with (path / _DATA_FILE).open("rb") as file:
            head = file.read(_META.size)
    except OSError:
        return False
    if len(head) < _META.size:
        return False
    number, _pad, flags, _lower, _upper, magic, version = _META.unpack(head)
    return number == 0 and flags & _META_FLAG != 0 and (magic, version) == (_MAGIC, _DATA_VERSION)


class PageReader:
    """The values of one named database of an open environment, a batch at a time.

    One batch at a time: the caller serialises `values` (the index does, with its
    batch lock), since a grown file is mapped again between batches.
    """

    def __init__(self, env: lmdb.Environment, path: Path, name: bytes) -> None:
        if _lmdb_pages is None:
            raise RuntimeError("the compiled page walk is not installed")
        self._main = env.open_db(None, create=False)
        self._name = name
        self._psize = int(env.stat()["psize"])
        self._fd = os.open(path / _DATA_FILE, os.O_RDONLY | os.O_CLOEXEC)
        self._mapped: mmap.mmap | None = None
        self._meta_mapped: mmap.mmap | None = None
        try:
            self._pages = _lmdb_pages.Pages(self._map(), self._psize)
            # The two meta pages on a mapping of their own, which a grown file never
            # replaces: `last_txn` stays one bound compiled method for the reader's life.
            self._meta_mapped = mmap.mmap(self._fd, 2 * self._psize, prot=mmap.PROT_READ)
            self._meta = _lmdb_pages.Pages(self._meta_mapped, self._psize)
        except BaseException:
            os.close(self._fd)  # a mapping made goes with its Pages, collected
            raise
        self.last_txn: Callable[[], int] = self._meta.last_txn
        """The id of the environment's last committed write transaction, read from the
        file's meta pages: what a new read transaction's `id()` would be, without one
        (a reader slot taken and given back). -1 while the pages are not mapped."""
        # (read transaction id, (root page, depth) or None): a read transaction's id
        # is the last write it sees, so every transaction of one id has one tree.
        self._seen: tuple[int, tuple[int, int] | None] = (-1, None)

    @classmethod
    def open(cls, env: lmdb.Environment, path: Path, name: bytes) -> PageReader | None:
        """A reader, or None where LMDB's `get` must serve alone."""
        if _lmdb_pages is None or not layout_known(path):
            return None
        return cls(env, path, name)

    def values(self, txn: lmdb.Transaction, keys: list[bytes]) -> list[bytes | None] | None:
        """The value of each key (None: no such key) as `txn` sees the database, or None
        where LMDB's `get` must answer instead."""
        tree = self._tree(txn)
        if tree is None:
            return None
        root, depth = tree
        found = self._pages.read(root, depth, keys)
        if found is False:  # the file has grown since it was mapped
            self._pages.release()
            self._pages = _lmdb_pages.Pages(self._map(), self._psize)
            found = self._pages.read(root, depth, keys)
        return found if isinstance(found, list) else None

    def close(self) -> None:
        self._pages.release()
        self._meta.release()
        for mapped in (self._mapped, self._meta_mapped):
            if mapped is not None:
                mapped.close()
        self._mapped = self._meta_mapped = None
        os.close(self._fd)

    def _tree(self, txn: lmdb.Transaction) -> tuple[int, int] | None:
        txn_id = txn.id()
        seen_id, tree = self._seen
        if seen_id == txn_id:
            return tree
        raw = txn.get(self._name, db=self._main)
        tree = None
        if raw is not None and len(raw) == _TREE.size:
            _pad, flags, depth, _b, _l, _o, _entries, root = _TREE.unpack(raw)
            # Flags: a key order of its own (reverse, integer) or duplicates; an empty
            # tree has no root. LMDB answers for those.
            if flags == 0 and root != _NO_ROOT:
                tree = (root, depth)
        self._seen = (txn_id, tree)
        return tree

    def _map(self) -> mmap.mmap:
        if self._mapped is not None:
            self._mapped.close()  # its Pages has let go of it
        self._mapped = mmap.mmap(self._fd, 0, prot=mmap.PROT_READ)
        return self._mapped
