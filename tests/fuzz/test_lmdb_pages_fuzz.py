"""responder/_lmdb_pages.pyx against LMDB's own `get` on drawn trees, and against
damaged pages it must survive.

Trees of drawn keys (1 to 24 bytes, so short keys, prefixes of one another and
record-sized keys meet) and values, with a bulk of random ones beside them so some
trees have branch levels; asked for every stored key and for drawn ones. Then pages
of a real tree with drawn bytes overwritten, and the file cut short: the walk must
answer a value per key, decline (None) or ask for a new mapping (False), and never
read outside the file.
"""

from __future__ import annotations

import random
import struct
import tempfile
from pathlib import Path

import lmdb
from hypothesis import given
from hypothesis import strategies as st

from jpki_va.server.responder import _lmdb_pages
from jpki_va.server.responder.lmdb_pages import PageReader

_NAME = b"status"
_PSIZE = 4096
_keys = st.binary(min_size=1, max_size=24)


def _tree_of(path: Path, items: dict[bytes, bytes]) -> lmdb.Environment:
    env = lmdb.open(str(path), max_dbs=2, map_size=1 << 28)
    db = env.open_db(_NAME)
    with env.begin(write=True, db=db) as txn:
        for key, value in items.items():
            txn.put(key, value)
    return env


def _bulk(seed: int, count: int) -> dict[bytes, bytes]:
    rng = random.Random(seed)
    return {rng.randbytes(rng.randrange(1, 25)): rng.randbytes(32) for _ in range(count)}


@given(
    st.dictionaries(_keys, st.binary(max_size=64), max_size=200),
    st.integers(0, 2**32),
    st.sampled_from([0, 0, 300, 5_000]),
    st.lists(_keys, max_size=200),
)
def test_the_walk_reads_what_lmdb_gets(
    drawn: dict[bytes, bytes], seed: int, bulk: int, asked: list[bytes]
) -> None:
    items = {**_bulk(seed, bulk), **drawn}
    with tempfile.TemporaryDirectory() as directory:
        env = _tree_of(Path(directory), items)
        try:
            reader = PageReader.open(env, Path(directory), _NAME)
            assert reader is not None
            keys = [*drawn, *asked, *list(items)[:300]]
            db = env.open_db(_NAME)
            with env.begin(db=db) as txn:
                found = reader.values(txn, keys)
                expected = [txn.get(key) for key in keys]
            # Declines only for an empty tree; otherwise the same values.
            assert found == expected or (found is None and not items)
            reader.close()
        finally:
            env.close()


def _damaged_fixture() -> tuple[bytes, int, int, list[bytes]]:
    items = _bulk(5, 6_000)
    with tempfile.TemporaryDirectory() as directory:
        env = _tree_of(Path(directory), items)
        with env.begin() as txn:
            record = bytes(txn.get(_NAME) or b"")
        env.close()
        data = (Path(directory) / "data.mdb").read_bytes()
    _pad, _flags, depth, *_counts, root = struct.unpack("<IHHQQQQQ", record)
    assert depth >= 2
    return data, root, depth, sorted(items)[::20]


_DATA, _ROOT, _DEPTH, _ASKED = _damaged_fixture()
_PAGES = len(_DATA) // _PSIZE
_WHOLE = _lmdb_pages.Pages(_DATA, _PSIZE).read(_ROOT, _DEPTH, _ASKED)


def _judge(result: object, asked: list[bytes]) -> None:
    assert result is None or result is False or isinstance(result, list)
    if isinstance(result, list):
        assert len(result) == len(asked)
        assert all(v is None or (isinstance(v, bytes) and len(v) < _PSIZE) for v in result)


@given(
    st.lists(
        st.tuples(st.integers(2 * _PSIZE, len(_DATA) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0, 10, 12, 16, 17, 18, 19]),
)
def test_damaged_pages_are_never_read_past(writes: list[tuple[int, int]], header_bias: int) -> None:
    data = bytearray(_DATA)
    for at, byte in writes:
        # Half the writes land on a page's header or its first node offsets.
        data[at - at % _PSIZE + header_bias if at % 2 else at] = byte
    pages = _lmdb_pages.Pages(bytes(data), _PSIZE)
    _judge(pages.read(_ROOT, _DEPTH, _ASKED), _ASKED)
    pages.release()


@given(st.integers(1, _PAGES - 1), st.integers(0, 2**64 - 1), st.integers(-2, 40))
def test_a_short_file_or_a_wrong_root_is_never_read_past(
    pages_kept: int, root: int, depth: int
) -> None:
    assert isinstance(_WHOLE, list) and any(_WHOLE)  # the whole file answers
    pages = _lmdb_pages.Pages(_DATA[: pages_kept * _PSIZE], _PSIZE)
    # Cut short, the file answers as whole, or asks to be mapped again: never otherwise.
    assert pages.read(_ROOT, _DEPTH, _ASKED) in (_WHOLE, False)
    _judge(pages.read(root, depth, _ASKED), _ASKED)
    pages.release()
