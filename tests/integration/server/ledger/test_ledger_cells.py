"""A shard counts answers in counter cells: exact under threads and processes, read
with the counts of the older form, refused (and nothing recorded) when it cannot count."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from jpki_va.core.domain import Provision
from jpki_va.server.ledger.provisions import (
    Disclosure,
    Ledger,
    LedgerClosed,
    LedgerError,
    LedgerReader,
    open_shard,
    read_ledgers,
    shard_path,
)
from tests.support import REPO

WHEN = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)  # 12:00 JST
DAY = (date(2026, 5, 1), date(2026, 5, 2))
ONE = {Provision.SIGNING_STATUS: 1}


def totals(ledger: LedgerReader) -> dict[tuple[Provision, str], int]:
    counts = ledger.counts(*DAY)
    return {(c.provision, c.verifier_id): c.count for c in counts}


@pytest.mark.parametrize("compiled", [True, False])
def test_threads_times_calls_is_the_count(tmp_path: Path, compiled: bool) -> None:
    ledger = Ledger(
        shard_path(tmp_path, 0), exclusive=True, writemap=True, cells=1024, compiled=compiled
    )
    threads_n, calls = 16, 500
    verifiers = ["bank", "city", "town"]

    def call(i: int) -> None:
        for j in range(calls):
            # Across a JST midnight too: every answer counts on its own day.
            at = WHEN + timedelta(hours=11, minutes=59, seconds=59.998, microseconds=j * 10)
            if (i + j) % 2:  # the unary call's way: either may be the first of a day's key
                ledger.record_one(verifiers[i % 3], Provision.SIGNING_STATUS, at)
            else:
                ledger.record(verifiers[i % 3], ONE, at)

    try:
        workers = [threading.Thread(target=call, args=(i,)) for i in range(threads_n)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        both = ledger.counts(DAY[0], DAY[1] + timedelta(days=1))
        assert sum(c.count for c in both) == threads_n * calls
        per_day = Counter[date]()
        for c in both:
            per_day[c.day] += c.count
        assert per_day == {DAY[0]: 200 * threads_n, DAY[1]: 300 * threads_n}
        assert sum(c.count for c in both if c.verifier_id == "bank") == 6 * calls
    finally:
        ledger.close()


WRITER = textwrap.dedent(
    """
    import sys, threading
    from datetime import UTC, datetime
    from pathlib import Path
    from jpki_va.core.domain import Provision
    from jpki_va.server.ledger.provisions import open_shard
    ledger = open_shard(Path(sys.argv[1]), int(sys.argv[2]), cells=64)
    when = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
    def run():
        for _ in range(300):
            ledger.record("bank", {Provision.SIGNING_STATUS: 1}, when)
    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    print("done", flush=True)
    """
)


def test_several_processes_each_with_its_shard_sum_exactly(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(slot)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for slot in range(3)
    ]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert outs == ["done\n"] * 3
    with read_ledgers(tmp_path) as ledgers:
        assert totals(ledgers) == {(Provision.SIGNING_STATUS, "bank"): 3 * 4 * 300}


def test_a_shard_of_the_older_form_is_read_and_counted_on(tmp_path: Path) -> None:
    """Counts a shard kept in LMDB before the cells stay there and are summed."""
    path = shard_path(tmp_path, 0)
    old = Ledger(path, exclusive=True, writemap=True)  # the shard as it was written before
    old.record("bank", {Provision.SIGNING_STATUS: 5}, WHEN)
    old.record("bank", {Provision.AUTH_STATUS: 2}, WHEN - timedelta(days=400))
    old.close()
    assert not (path / "counts.cells").exists()
    with read_ledgers(tmp_path) as ledgers:  # an older shard, read as it is
        assert totals(ledgers) == {(Provision.SIGNING_STATUS, "bank"): 5}
    shard = open_shard(tmp_path, 0, cells=16)
    try:
        shard.record("bank", {Provision.SIGNING_STATUS: 3, Provision.SIGNING_CRL: 1}, WHEN)
        expected = {(Provision.SIGNING_STATUS, "bank"): 8, (Provision.SIGNING_CRL, "bank"): 1}
        assert totals(shard) == expected
        # Retention purges both forms; a freed cell starts from zero for its next key.
        shard.record("city", ONE, WHEN - timedelta(days=400))
        assert shard.purge(DAY[0] - timedelta(days=30), WHEN - timedelta(days=30)) == (2, 0)
        shard.record("town", ONE, WHEN)
        assert totals(shard) == {**expected, (Provision.SIGNING_STATUS, "town"): 1}
    finally:
        shard.close()
    with read_ledgers(tmp_path) as ledgers:
        assert totals(ledgers) == {**expected, (Provision.SIGNING_STATUS, "town"): 1}
        assert ledgers.counts(date(2020, 1, 1), DAY[0]) == []


def test_what_cannot_be_counted_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    shard = open_shard(tmp_path, 0, cells=2)
    try:
        shard.record("bank", ONE, WHEN)
        shard.record("city", ONE, WHEN)
        shown = Disclosure(WHEN, "town", Provision.SIGNING_RECORD, "CARD_SIGN:01", "consent")
        # A third key finds no free cell: the answer is refused, its disclosure unwritten
        # and the counts of the same record that did have a cell not counted either.
        with pytest.raises(LedgerError, match="all 2 cells"):
            shard.record(
                "city", {Provision.SIGNING_STATUS: 1, Provision.SIGNING_RECORD: 1}, WHEN, [shown]
            )
        assert totals(shard) == {
            (Provision.SIGNING_STATUS, "bank"): 1,
            (Provision.SIGNING_STATUS, "city"): 1,
        }
        assert shard.disclosures(WHEN - timedelta(days=1), WHEN + timedelta(days=1)) == []
        shard.record("bank", ONE, WHEN)  # keys that have cells go on being counted
    finally:
        shard.close()
    with pytest.raises(LedgerClosed):
        shard.record("bank", ONE, WHEN)
    with pytest.raises(LedgerClosed):  # unary Check's one answer, a key with its cell
        shard.record_one("bank", Provision.SIGNING_STATUS, WHEN)
    with read_ledgers(tmp_path) as ledgers:
        assert totals(ledgers)[(Provision.SIGNING_STATUS, "bank")] == 2


def test_cells_need_the_writer_lock(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="writer lock"):
        Ledger(tmp_path, cells=16)
