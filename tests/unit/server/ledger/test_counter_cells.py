"""The counter cells: the compiled adds and the pure-Python ones give the same file."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from jpki_va.server.ledger import _counter_cells, counter_cells
from jpki_va.server.ledger.counter_cells import CounterFile

CAPACITY = 1024


def _hammer(file: CounterFile, plan: list[list[tuple[int, int]]]) -> None:
    def run(adds: list[tuple[int, int]]) -> None:
        for slot, n in adds:
            file.cells.add(slot, n)

    threads = [threading.Thread(target=run, args=(adds,)) for adds in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compiled_and_python_cells_count_alike_under_threads(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    plan = [
        [(rng.randrange(CAPACITY), rng.choice([1, 1, 1, 2, 7, 1 << 40])) for _ in range(2000)]
        for _ in range(8)
    ]
    expected = [0] * CAPACITY
    for adds in plan:
        for slot, n in adds:
            expected[slot] += n
    contents = []
    for compiled in (True, False):
        file = CounterFile(
            tmp_path / f"cells-{compiled}", CAPACITY, writable=True, compiled=compiled
        )
        try:
            _hammer(file, plan)
            assert [file.cells.get(s) for s in range(CAPACITY)] == expected
            file.cells.flush()
        finally:
            file.close()
        contents.append((tmp_path / f"cells-{compiled}").read_bytes())
        reader = CounterFile(tmp_path / f"cells-{compiled}", 1, writable=False)
        try:
            assert reader.capacity == CAPACITY
            assert [reader.cells.get(s) for s in range(CAPACITY)] == expected
        finally:
            reader.close()
    assert contents[0] == contents[1]


@pytest.mark.parametrize("compiled", [True, False])
def test_cells_refuse_what_is_outside_or_closed(tmp_path: Path, compiled: bool) -> None:
    file = CounterFile(tmp_path / "cells", 4, writable=True, compiled=compiled)
    file.cells.put(3, (1 << 64) - 1)
    file.cells.add(3, 2)  # wraps like the C add: the same bytes either way
    assert file.cells.get(3) == 1
    for slot in (-1, 4):
        with pytest.raises(IndexError):
            file.cells.add(slot, 1)
    file.close()
    with pytest.raises(ValueError):
        file.cells.add(0, 1)
    reader = CounterFile(tmp_path / "cells", 1, writable=False, compiled=compiled)
    try:
        with pytest.raises(ValueError, match="read-only"):
            reader.cells.add(0, 1)
    finally:
        reader.close()
    assert (tmp_path / "cells").stat().st_mode & 0o777 == 0o600


def test_the_installed_tree_uses_the_compiled_cells() -> None:
    """`./tasks setup` builds the extension; were the build broken, this fails instead
    of the pure-Python cells serving unnoticed."""
    assert counter_cells.COMPILED
    assert Path(_counter_cells.__file__).suffix == ".so"
