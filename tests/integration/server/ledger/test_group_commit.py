"""Group commit of the ledger: many callers, one commit, each answered after it (第41条)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from jpki_va.core.domain import Provision
from jpki_va.server.ledger.group_commit import GroupCommit, LedgerBacklog, LedgerClosed
from jpki_va.server.ledger.provisions import Disclosure, Entry, Ledger, LedgerError
from tests.support import wait_for

WHEN = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
DAY = (date(2026, 5, 1), date(2026, 5, 2))


def totals(ledger: Ledger) -> dict[tuple[Provision, str], int]:
    return {(c.provision, c.verifier_id): c.count for c in ledger.counts(*DAY)}


class HeldLedger(Ledger):
    """A real ledger whose commits wait for `release`: lets a test line callers up."""

    def __init__(self, path: Path, map_size: int = 1 << 30) -> None:
        super().__init__(path, map_size=map_size)
        self.release = threading.Event()
        self.entered = threading.Event()

    def record_all(self, entries: Iterable[Entry]) -> None:
        self.entered.set()
        self.release.wait(10)
        super().record_all(entries)


def run_callers(committer: GroupCommit, jobs: list[tuple[str, Provision]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def call(verifier_id: str, provision: Provision) -> None:
        try:
            committer.record(verifier_id, Counter({provision: 1}), WHEN)
        except LedgerError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "ledger")
    yield ledger
    ledger.close()


def test_many_threads_are_counted_exactly(ledger: Ledger) -> None:
    committer = GroupCommit(ledger)
    per_thread = 150
    kinds = (Provision.SIGNING_STATUS, Provision.AUTH_STATUS)

    def work(n: int) -> None:
        for i in range(per_thread):
            committer.record(f"v{n % 3}", Counter({kinds[i % 2]: 1}), WHEN)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    committer.close()
    got = totals(ledger)
    assert sum(got.values()) == 24 * per_thread == committer.recorded
    for v in range(3):  # 8 threads per verifier, half of each one's calls per kind
        for kind in kinds:
            assert got[(kind, f"v{v}")] == 8 * per_thread // 2
    assert committer.commits <= committer.recorded


def test_callers_waiting_together_share_one_commit(tmp_path: Path) -> None:
    ledger = HeldLedger(tmp_path / "ledger")
    committer = GroupCommit(ledger)
    try:
        first = threading.Thread(
            target=committer.record, args=("bank", Counter({Provision.SIGNING_STATUS: 1}), WHEN)
        )
        first.start()
        assert ledger.entered.wait(10)  # the first commit is under way and held
        done: list[str] = []

        def call(n: int) -> None:
            committer.record(f"v{n}", Counter({Provision.AUTH_STATUS: 2}), WHEN)
            done.append(f"v{n}")

        rest = [threading.Thread(target=call, args=(n,)) for n in range(20)]
        for thread in rest:
            thread.start()
        wait_for(lambda: committer.pending == 20, "callers queued", timeout=10)
        assert done == []  # nobody is answered before the commit that counts them
        ledger.release.set()
        first.join(10)
        for thread in rest:
            thread.join(10)
        assert sorted(done) == sorted(f"v{n}" for n in range(20))
        assert committer.commits == 2 and committer.recorded == 21
        got = totals(ledger)
        assert got[(Provision.SIGNING_STATUS, "bank")] == 1
        assert all(got[(Provision.AUTH_STATUS, f"v{n}")] == 2 for n in range(20))
    finally:
        ledger.release.set()
        committer.close()
        ledger.close()


def test_a_failed_commit_fails_the_whole_group_and_counts_nothing(tmp_path: Path) -> None:
    # A map too small for the group: LMDB refuses the transaction (MapFullError).
    ledger = HeldLedger(tmp_path / "ledger", map_size=64 * 1024)
    committer = GroupCommit(ledger)
    try:
        ledger.release.set()
        committer.record("seed", Counter({Provision.SIGNING_STATUS: 1}), WHEN)
        ledger.release.clear()
        ledger.entered.clear()
        blocker = threading.Thread(
            target=committer.record, args=("block", Counter({Provision.SIGNING_STATUS: 1}), WHEN)
        )
        blocker.start()
        assert ledger.entered.wait(10)
        errors: list[BaseException] = []

        def call(n: int) -> None:
            try:
                committer.record(*_big(f"v{n}", 40))
            except LedgerError as exc:
                errors.append(exc)

        group = [threading.Thread(target=call, args=(n,)) for n in range(12)]
        for thread in group:
            thread.start()
        wait_for(lambda: committer.pending == 12, "callers queued", timeout=10)
        ledger.release.set()
        blocker.join(10)
        for thread in group:
            thread.join(10)
        assert len(errors) == 12
        assert all("cannot record the provision" in str(exc) for exc in errors)
        assert totals(ledger) == {
            (Provision.SIGNING_STATUS, "seed"): 1,
            (Provision.SIGNING_STATUS, "block"): 1,
        }
        assert ledger.disclosures(WHEN, WHEN.replace(hour=4)) == []
        # The ledger still works for a group that fits.
        committer.record("after", Counter({Provision.AUTH_STATUS: 1}), WHEN)
        assert totals(ledger)[(Provision.AUTH_STATUS, "after")] == 1
    finally:
        ledger.release.set()
        committer.close()
        ledger.close()


def _big(verifier_id: str, n: int) -> tuple[str, Counter[Provision], datetime, list[Disclosure]]:
    """An entry whose disclosures take a few kilobytes of the map each."""
    disclosures = [
        Disclosure(WHEN, verifier_id, Provision.SIGNING_RECORD, f"CARD_SIGN:{i:04X}", "x" * 900)
        for i in range(n)
    ]
    return verifier_id, Counter({Provision.SIGNING_RECORD: n}), WHEN, disclosures


def test_a_closed_environment_fails_the_group(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    committer = GroupCommit(ledger)
    committer.record("bank", Counter({Provision.SIGNING_STATUS: 1}), WHEN)
    ledger.close()
    errors = run_callers(committer, [(f"v{n}", Provision.SIGNING_STATUS) for n in range(8)])
    assert len(errors) == 8 and all(type(e) is LedgerError for e in errors)
    committer.close()
    reopened = Ledger(tmp_path / "ledger", readonly=True)
    try:
        assert totals(reopened) == {(Provision.SIGNING_STATUS, "bank"): 1}
    finally:
        reopened.close()


def test_a_full_queue_refuses_at_once(tmp_path: Path) -> None:
    ledger = HeldLedger(tmp_path / "ledger")
    committer = GroupCommit(ledger, max_pending=4)
    try:
        first = threading.Thread(
            target=committer.record, args=("bank", Counter({Provision.SIGNING_STATUS: 1}), WHEN)
        )
        first.start()
        assert ledger.entered.wait(10)
        waiting = [
            threading.Thread(
                target=committer.record,
                args=(f"v{n}", Counter({Provision.SIGNING_STATUS: 1}), WHEN),
            )
            for n in range(4)
        ]
        for thread in waiting:
            thread.start()
        wait_for(lambda: committer.pending == 4, "callers queued", timeout=10)
        with pytest.raises(LedgerBacklog, match="waiting for the provision ledger"):
            committer.record("late", Counter({Provision.SIGNING_STATUS: 1}), WHEN)
        ledger.release.set()
        first.join(10)
        for thread in waiting:
            thread.join(10)
        got = totals(ledger)
        assert sum(got.values()) == 5 and ("late" not in {v for _, v in got})
    finally:
        ledger.release.set()
        committer.close()
        ledger.close()


def test_close_commits_what_is_queued_then_refuses(ledger: Ledger) -> None:
    committer = GroupCommit(ledger)
    committer.record("bank", Counter({Provision.SIGNING_STATUS: 3}), WHEN)
    committer.close()
    with pytest.raises(LedgerClosed):
        committer.record("bank", Counter({Provision.SIGNING_STATUS: 1}), WHEN)
    assert totals(ledger) == {(Provision.SIGNING_STATUS, "bank"): 3}
