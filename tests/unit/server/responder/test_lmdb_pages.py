"""responder/lmdb_pages.py reads a batch of values from an LMDB tree's pages as LMDB's
own `get` reads them in the same read transaction, or declines and lets `get` answer.

Real LMDB environments throughout, written by LMDB: trees deep enough to have branch
levels, batches across the compiled walk's group of 128, keys around every stored
key, snapshots older than the last write and a file grown since it was mapped; and
what the walk must decline (values on overflow pages, databases with flags, an empty
tree, keys LMDB refuses). tests/fuzz/test_lmdb_pages_fuzz.py draws the trees and
throws damaged pages at the walk.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from jpki_va.server.responder import _lmdb_pages, lmdb_pages
from jpki_va.server.responder.lmdb_pages import PageReader, layout_known

NAME = b"status"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[lmdb.Environment]:
    environment = lmdb.open(str(tmp_path), max_dbs=4, map_size=1 << 30)
    yield environment
    environment.close()


def _fill(env: lmdb.Environment, db: lmdb._Database, items: dict[bytes, bytes]) -> None:
    with env.begin(write=True, db=db) as txn:
        for key, value in items.items():
            txn.put(key, value)


def _items(rng: random.Random, count: int) -> dict[bytes, bytes]:
    """Record keys as the index has them and keys of other sizes; values of 0 to 200
    bytes (the index's are 32)."""
    items: dict[bytes, bytes] = {}
    while len(items) < count:
        if rng.random() < 0.7:
            key = bytes([rng.randrange(1, 5)]) + rng.randbytes(20)
        else:
            key = rng.randbytes(rng.randrange(1, 41))
        items[key] = rng.randbytes(rng.choice((32, 32, 0, 1, rng.randrange(200))))
    return items


def _near(keys: list[bytes]) -> list[bytes]:
    """Keys next to stored ones in LMDB's order, mostly not stored themselves."""
    out = [b"\x00", b"\xff" * 40]
    for key in keys:
        out.append(key + b"\x00")
        if len(key) > 1:
            out.append(key[:-1])
        out.append(key[:-1] + bytes([(key[-1] + 1) % 256]))
        out.append(key[:-1] + bytes([(key[-1] - 1) % 256]))
    return out


def _lmdb(txn: lmdb.Transaction, db: lmdb._Database, keys: list[bytes]) -> list[bytes | None]:
    found = [txn.get(key, db=db) for key in keys]
    return [None if value is None else bytes(value) for value in found]


def _both(
    env: lmdb.Environment, reader: PageReader, db: lmdb._Database, keys: list[bytes]
) -> tuple[list[bytes | None] | None, list[bytes | None]]:
    with env.begin(db=db) as txn:
        return reader.values(txn, keys), _lmdb(txn, db, keys)


def test_the_compiled_walk_is_installed() -> None:
    # Where a compiler is expected (here, and in the image) a fallback must not pass
    # unseen: without the module LMDB's get would serve, correctly and slower.
    assert lmdb_pages.COMPILED
    assert Path(_lmdb_pages.__file__).suffix == ".so"


def test_a_batch_reads_what_lmdb_gets(env: lmdb.Environment, tmp_path: Path) -> None:
    db = env.open_db(NAME)
    rng = random.Random(7)
    items = _items(rng, 30_000)
    _fill(env, db, items)
    with env.begin(db=db) as txn:
        assert txn.stat(db)["depth"] >= 3  # the root, branch pages and leaves
    reader = PageReader.open(env, tmp_path, NAME)
    assert reader is not None
    stored = list(items)
    rng.shuffle(stored)
    asked = stored + _near(stored[:2_000])
    rng.shuffle(asked)
    at = 0
    for size in (1, 2, 7, 100, 127, 128, 129, 256, 1_000, 5_000):
        batch = asked[at : at + size]
        at += size
        mine, theirs = _both(env, reader, db, batch)
        assert mine is not None and mine == theirs
    mine, theirs = _both(env, reader, db, asked[at:])
    assert mine == theirs
    assert sum(value is not None for value in theirs) > 10_000  # found and absent alike
    assert sum(value is None for value in theirs) > 1_000
    assert _both(env, reader, db, []) == ([], [])
    reader.close()


def test_each_transaction_reads_its_own_snapshot_and_the_file_as_it_grows(
    env: lmdb.Environment, tmp_path: Path
) -> None:
    db = env.open_db(NAME)
    rng = random.Random(11)
    first = _items(rng, 2_000)
    _fill(env, db, first)
    reader = PageReader.open(env, tmp_path, NAME)
    assert reader is not None
    mapped = (tmp_path / "data.mdb").stat().st_size
    keys = list(first)
    with env.begin(db=db) as before:
        assert reader.values(before, keys) == _lmdb(before, db, keys)
        # A delta: new keys (the file grows past what the reader mapped), changed
        # values and deleted keys, while the older transaction stays open.
        later = _items(rng, 40_000)
        with env.begin(write=True, db=db) as txn:
            for key in keys[:500]:
                txn.delete(key)
            for key in keys[500:1_000]:
                txn.put(key, b"changed" + key)
            for key, value in later.items():
                txn.put(key, value)
        assert (tmp_path / "data.mdb").stat().st_size > mapped
        everything = keys + list(later)
        rng.shuffle(everything)
        assert reader.values(before, everything) == _lmdb(before, db, everything)
        with env.begin(db=db) as after:
            seen = reader.values(after, everything)
            assert seen is not None and seen == _lmdb(after, db, everything)
            assert seen != _lmdb(before, db, everything)
        # The older snapshot again, after the newer one was read.
        assert reader.values(before, keys) == _lmdb(before, db, keys)
    reader.close()


def test_last_txn_is_the_last_write_committed_by_any_process(
    env: lmdb.Environment, tmp_path: Path
) -> None:
    """What a new read transaction's id would be, read from the meta pages: after each
    commit here, after one that grows the file past the walk's mapping, and after a
    commit by another process (as the responder's ingester writes a delta)."""
    db = env.open_db(NAME)
    rng = random.Random(5)
    _fill(env, db, _items(rng, 10))
    reader = PageReader.open(env, tmp_path, NAME)
    assert reader is not None
    mapped = (tmp_path / "data.mdb").stat().st_size
    seen = []
    for count in (1, 20, 30_000, 1):
        with env.begin() as txn:
            assert reader.last_txn() == txn.id() == env.info()["last_txnid"]
            seen.append(txn.id())
        _fill(env, db, _items(rng, count))
    assert (tmp_path / "data.mdb").stat().st_size > mapped
    assert seen == sorted(set(seen))  # every commit moved it
    writer = (
        "import lmdb, sys\n"
        "env = lmdb.open(sys.argv[1], max_dbs=4, map_size=1 << 30)\n"
        "with env.begin(write=True, db=env.open_db(b'status')) as txn:\n"
        "    txn.put(b'from another process', b'x')\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(tmp_path)], check=True, timeout=60)
    with env.begin() as txn:
        assert reader.last_txn() == txn.id() == seen[-1] + 2
    reader.close()


def test_it_declines_what_lmdb_must_answer(env: lmdb.Environment, tmp_path: Path) -> None:
    db = env.open_db(NAME)
    items = _items(random.Random(3), 3_000)
    big = next(iter(items))
    items[big] = bytes(range(256)) * 40  # past a page: on overflow pages
    _fill(env, db, items)
    reader = PageReader.open(env, tmp_path, NAME)
    assert reader is not None
    others = [key for key in items if key != big]
    with env.begin(db=db) as txn:
        assert reader.values(txn, others[:200]) == _lmdb(txn, db, others[:200])
        assert reader.values(txn, [*others[:50], big]) is None
        # Keys LMDB refuses (it raises): the caller's get raises as before.
        assert reader.values(txn, [b""]) is None
        assert reader.values(txn, [b"x" * 512]) is None
        assert reader.values(txn, [bytearray(others[0])]) is None  # type: ignore[list-item]
    reader.close()
    # Databases with an order of their own or duplicates, and an empty one.
    for name, flagged in (
        (b"dups", env.open_db(b"dups", dupsort=True)),
        (b"ints", env.open_db(b"ints", integerkey=True)),
    ):
        _fill(env, flagged, {(7).to_bytes(8, "little"): b"v", (9).to_bytes(8, "little"): b"w"})
        flagged_reader = PageReader.open(env, tmp_path, name)
        assert flagged_reader is not None
        with env.begin() as txn:
            assert flagged_reader.values(txn, [(7).to_bytes(8, "little")]) is None
        flagged_reader.close()
    env.open_db(b"empty")
    empty_reader = PageReader.open(env, tmp_path, b"empty")
    assert empty_reader is not None
    with env.begin() as txn:
        assert empty_reader.values(txn, [b"k"]) is None
    empty_reader.close()


def test_only_a_known_layout_is_walked(env: lmdb.Environment, tmp_path: Path) -> None:
    env.open_db(NAME)
    assert layout_known(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    assert not layout_known(other)  # no file
    (other / "data.mdb").write_bytes(b"\x00" * 64)  # not LMDB's magic
    assert not layout_known(other)
    assert PageReader.open(env, other, NAME) is None
    head = bytearray((tmp_path / "data.mdb").read_bytes()[:4096])
    head[20] ^= 0xFF  # another format version
    (other / "data.mdb").write_bytes(bytes(head))
    assert not layout_known(other)
    (other / "data.mdb").write_bytes(b"\x00" * 8)  # shorter than a meta page's head
    assert not layout_known(other)
