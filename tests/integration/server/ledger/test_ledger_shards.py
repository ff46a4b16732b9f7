"""Provision-ledger shards: one writer per shard, every reader sums them all.

The responder's workers each write their own shard (`worker-N`); the report reads
the shards and a ledger written before shards (the directory's own environment)
as one ledger, so an upgrade loses no counted provision.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jpki_va.core.domain import Provision
from jpki_va.server.cmd.main import main
from jpki_va.server.ledger.provisions import (
    Disclosure,
    Ledger,
    LedgerError,
    ShardInUse,
    claim_shards,
    mark_signer_ledger,
    open_shard,
    read_ledgers,
    shard_path,
)
from jpki_va.server.ledger.report import Period, annual_totals, audit_entries
from tests.support import REPO

WHEN = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)


def _record(ledger: Ledger, verifier: str, n: int, at: datetime = WHEN) -> None:
    disclosure = Disclosure(at, verifier, Provision.SIGNING_RECORD, f"CARD_SIGN:{n:X}", "consent")
    ledger.record(
        verifier, Counter({Provision.SIGNING_STATUS: n, Provision.SIGNING_RECORD: 1}), at,
        [disclosure],
    )  # fmt: skip


def test_shards_and_a_ledger_from_before_shards_are_summed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "ledger"
    legacy = Ledger(root)  # the layout before shards: one environment in the directory
    _record(legacy, "bank", 1, WHEN + timedelta(hours=2))
    legacy.close()
    first, second = open_shard(root, 0), open_shard(root, 1)
    try:
        _record(first, "bank", 10, WHEN + timedelta(hours=1))
        _record(second, "bank", 100, WHEN)
        _record(second, "city", 1000, WHEN + timedelta(hours=3))
    finally:
        first.close()
        second.close()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["worker-0", "worker-1"]

    with read_ledgers(root) as ledgers:
        assert ledgers.paths == [root, shard_path(root, 0), shard_path(root, 1)]
        counts = ledgers.counts(WHEN.date(), WHEN.date() + timedelta(days=1))
        by = {(c.provision, c.verifier_id): c.count for c in counts}
        assert by == {
            (Provision.SIGNING_RECORD, "bank"): 3,
            (Provision.SIGNING_RECORD, "city"): 1,
            (Provision.SIGNING_STATUS, "bank"): 111,
            (Provision.SIGNING_STATUS, "city"): 1000,
        }
        assert annual_totals([ledgers], Period.calendar_year(2026))[Provision.SIGNING_STATUS] == {
            "bank": 111,
            "city": 1000,
        }
        day = WHEN.date()
        trail = audit_entries([ledgers], day, day + timedelta(days=1), None)
        assert [d.subject for d in trail] == [f"CARD_SIGN:{n:X}" for n in (100, 10, 1, 1000)]
        assert [d.subject for d in ledgers.disclosures(WHEN, WHEN + timedelta(days=1), "bank")] == [
            f"CARD_SIGN:{n:X}" for n in (100, 10, 1)
        ]

    signer = tmp_path / "signer-ledger"  # the report needs the signer's too (its tokens)
    Ledger(signer).close()
    mark_signer_ledger(signer)
    with pytest.raises(SystemExit) as exit_code:
        main(["report", "annual", "--year", "2026", "--ledger", str(root),
              "--ledger", str(signer), "--format", "json"])  # fmt: skip
    assert exit_code.value.code == 0
    report = json.loads(capsys.readouterr().out)
    (status,) = [p for p in report["provisions"] if p["provision"] == "SIGNING_STATUS"]
    assert status["by_verifier"] == {"bank": 111, "city": 1000}
    assert status["total"] == 1111


def test_a_directory_without_a_ledger_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "worker-0").mkdir()  # a shard directory with no environment in it
    with pytest.raises(LedgerError, match="holds no provision ledger"):
        read_ledgers(tmp_path)
    with pytest.raises(LedgerError, match="holds no provision ledger"):
        read_ledgers(tmp_path / "missing")
    with pytest.raises(SystemExit) as exit_code:
        main(["report", "annual", "--year", "2026", "--ledger", str(tmp_path)])
    assert exit_code.value.code != 0
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds no provision ledger" in error


HOLDER = textwrap.dedent(
    """
    import sys, time
    from collections import Counter
    from datetime import UTC, datetime
    from pathlib import Path
    from jpki_va.core.domain import Provision
    from jpki_va.server.ledger.provisions import open_shard
    ledger = open_shard(Path(sys.argv[1]), 0)
    ledger.record("bank", Counter({Provision.SIGNING_STATUS: 5}), datetime.now(UTC))
    print("held", flush=True)
    time.sleep(120)
    """
)


def test_one_live_writer_per_shard_and_a_dead_ones_slot_is_taken_back(tmp_path: Path) -> None:
    root = tmp_path / "ledger"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(ShardInUse, match="worker-0 is written by another live process"):
            open_shard(root, 0)
        with pytest.raises(ShardInUse):
            claim_shards(root, 2)  # what a second responder on this directory is told
        other = open_shard(root, 1)  # another slot is free
        other.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    claim_shards(root, 2)
    again = open_shard(root, 0)  # the kernel dropped the dead holder's lock
    try:
        with pytest.raises(ShardInUse):
            open_shard(root, 0)  # the same process twice is refused too
        again.record("bank", Counter({Provision.SIGNING_STATUS: 2}), datetime.now(UTC))
    finally:
        again.close()
    with read_ledgers(root) as ledgers:
        today = datetime.now(UTC).date()
        counts = ledgers.counts(today - timedelta(days=1), today + timedelta(days=2))
    assert sum(c.count for c in counts) == 7  # the dead writer's counts are kept


def test_a_negative_slot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="negative"):
        shard_path(tmp_path, -1)


def test_a_shard_is_written_through_the_map_and_a_reader_sees_its_commits(
    tmp_path: Path,
) -> None:
    """A worker's shard commits without a system call (LMDB writemap); the readers of
    the directory, which open it read-only, read its commits as before. (That a
    SIGKILLed worker loses no count is test_ledger.py's, on the real responder.)"""
    shard = open_shard(tmp_path, 0)
    try:
        assert shard._env.flags()["writemap"]
        shard.record("v1", Counter({Provision.SIGNING_STATUS: 2}), WHEN)
        shard.record("v1", Counter({Provision.SIGNING_STATUS: 1}), WHEN)
    finally:
        shard.close()
    with read_ledgers(tmp_path) as ledgers:
        totals = annual_totals([ledgers], Period.calendar_year(2026))
    assert totals[Provision.SIGNING_STATUS] == {"v1": 3}
