"""The provision ledger and audit trail: what a client saw answered survives SIGKILL."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import grpc

from jpki_va.core.clock import JST
from jpki_va.core.domain import Provision
from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.ledger.provisions import Disclosure, Ledger, open_shard, read_ledgers
from jpki_va.server.ledger.report import (
    Period,
    annual_totals,
    audit_entries,
    render_annual,
    render_audit,
)
from jpki_va.server.rpc.server_common import SERVED_BY
from tests.support import ALL_ROLES_VERIFIER, JPKI_VA, REPO, Pki, start_responder, wait_for


def test_counts_by_day_kind_and_verifier(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    late = datetime(2026, 12, 31, 15, 30, tzinfo=UTC)  # 2027-01-01 00:30 in Japan
    try:
        ledger.record(
            "bank", Counter({Provision.SIGNING_STATUS: 3}), datetime(2026, 5, 1, tzinfo=UTC)
        )
        ledger.record(
            "bank", Counter({Provision.SIGNING_STATUS: 2}), datetime(2026, 5, 2, tzinfo=UTC)
        )
        ledger.record("city", Counter({Provision.AUTH_CRL: 1}), datetime(2026, 5, 2, tzinfo=UTC))
        ledger.record("bank", Counter({Provision.SIGNING_STATUS: 7}), late)
        totals = annual_totals([ledger], Period.calendar_year(2026))
        assert totals[Provision.SIGNING_STATUS] == {"bank": 5}
        assert totals[Provision.AUTH_CRL] == {"city": 1}
        assert annual_totals([ledger], Period.calendar_year(2027))[Provision.SIGNING_STATUS] == {
            "bank": 7
        }
        md = render_annual(totals, Period.calendar_year(2026), "md")
        assert "| 署名用電子証明書失効情報 (signing status, 第18条1項) | 5 |" in md
        csv = render_annual(totals, Period.calendar_year(2026), "csv").splitlines()
        assert "2026,SIGNING_STATUS,yes,bank,5," in csv and "2026,VERIFIER_TOKEN,yes,*,0,0" in csv
    finally:
        ledger.close()


def test_audit_trail_by_verifier_and_period(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    when = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
    try:
        for i, who in enumerate(["bank", "city", "bank"]):
            at = when + timedelta(days=i)
            disclosure = Disclosure(
                at, who, Provision.SIGNING_RECORD, f"CARD_SIGN:{i:02X}", "consent"
            )
            ledger.record(who, Counter({Provision.SIGNING_RECORD: 1}), at, [disclosure])
        bank = audit_entries([ledger], date(2026, 6, 1), date(2026, 6, 4), "bank")
        assert [d.subject for d in bank] == ["CARD_SIGN:00", "CARD_SIGN:02"]
        assert len(audit_entries([ledger], date(2026, 6, 2), date(2026, 6, 3), None)) == 1
        rows = json.loads(render_audit(bank, "json"))
        assert rows[0]["verifier"] == "bank" and rows[0]["provision"] == "SIGNING_RECORD"
    finally:
        ledger.close()
    result = subprocess.run(
        [*JPKI_VA, "report", "audit",
         "--ledger", str(tmp_path / "ledger"), "--from", "2026-06-01", "--to", "2026-06-03",
         "--verifier", "city", "--format", "csv"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split(",")[1:4] == [
        "city",
        "SIGNING_RECORD",
        "CARD_SIGN:01",
    ]
    missing = subprocess.run(
        [*JPKI_VA, "report", "annual", "--year", "2026",
         "--ledger", str(tmp_path / "nowhere")],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "holds no provision ledger" in missing.stderr


WRITER = textwrap.dedent(
    """
    import sys
    from collections import Counter
    from datetime import UTC, datetime
    from pathlib import Path
    from jpki_va.core.domain import Provision
    from jpki_va.server.ledger.provisions import Disclosure, Ledger

    ledger = Ledger(Path(sys.argv[1]))
    i = 0
    while True:
        now = datetime.now(UTC)
        d = Disclosure(now, "bank", Provision.SIGNING_RECORD, f"CARD_SIGN:{i:X}")
        ledger.record("bank", Counter({Provision.SIGNING_RECORD: 1}), now, [d])
        print(i, flush=True)  # "the answer leaves" only after the commit
        i += 1
    """
)


def _serving(channel: grpc.Channel) -> bool:
    try:
        va_pb2_grpc.StatusServiceStub(channel).ListIssuers(va_pb2.ListIssuersRequest(), timeout=5)
    except grpc.RpcError:
        return False
    return True


#: A status query the responder answers (and counts) for the all-roles verifier.
CHECK = va_pb2.CheckRequest(
    cert=va_pb2.CertRef(
        kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_MOBILE_SIGN, serial=b"\x05")
    )
)


def _responder_process(pki: Pki, state: Path) -> subprocess.Popen[str]:
    """A real `jpki-va responder` with two workers, in a process group of its own."""
    return subprocess.Popen(
        [*JPKI_VA, "responder", "--snapshots",
         str(pki.signer.config.snapshot_dir), "--state-dir", str(state), "--trust-anchor",
         str(pki.root_file), "--listen", "127.0.0.1:0", "--workers", "2", "--insecure-loopback",
         "--loopback-verifier", ALL_ROLES_VERIFIER, "--poll-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )  # fmt: skip


def _kill(proc: subprocess.Popen[str], channels: list[grpc.Channel]) -> None:
    """SIGKILL the responder's whole process group, as a crash would."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    if proc.stdout is not None:
        proc.stdout.close()
    for channel in channels:
        channel.close()


def _lines(proc: subprocess.Popen[str], count: int) -> list[str]:
    stdout = proc.stdout
    assert stdout is not None
    out: list[str] = []

    def more() -> bool:
        ready, _, _ = select.select([stdout], [], [], 0.1)
        if ready:
            out.append(stdout.readline())
        return len(out) >= count

    wait_for(more, f"{count} lines from the child", timeout=60)
    return out


def test_sigkill_loses_no_disclosure_that_was_answered(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        seen = _lines(proc, 50)
    finally:
        proc.kill()
        proc.wait(30)
    # Everything the child printed before it died was answered (printed after its commit).
    assert proc.stdout is not None
    answered = len(seen) + sum(
        1 for line in proc.stdout.read().splitlines(keepends=True) if line.endswith("\n")
    )
    proc.stdout.close()
    ledger = Ledger(path, readonly=True)
    try:
        day = datetime.now(JST).date()
        kept = audit_entries([ledger], day - timedelta(days=1), day + timedelta(days=1), "bank")
        counted = annual_totals([ledger], Period.calendar_year(day.year))[
            Provision.SIGNING_RECORD
        ].get("bank", 0)
    finally:
        ledger.close()
    # Every answered one is there; at most one more was committed but not yet answered.
    assert answered <= len(kept) <= answered + 1
    assert counted == len(kept)
    assert [d.subject for d in kept[:answered]] == [f"CARD_SIGN:{i:X}" for i in range(answered)]


def test_sigkill_of_the_responder_loses_no_count(pki: Pki, tmp_path: Path) -> None:
    """A real `jpki-va responder` process group with two workers, killed with SIGKILL."""
    pki.publish_and_wait()
    state = tmp_path / "state"
    proc = _responder_process(pki, state)
    answered = 0
    channels: list[grpc.Channel] = []
    try:
        (line,) = _lines(proc, 1)
        port = int(line.rsplit(" ", 1)[1])
        channels.extend(grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(4))
        wait_for(lambda: _serving(channels[0]), "the responder process to serve")
        for i in range(40):
            va_pb2_grpc.StatusServiceStub(channels[i % 4]).Check(CHECK, timeout=10)
            answered += 1
    finally:
        _kill(proc, channels)
    ledger = read_ledgers(state / "ledger")  # every worker's shard
    try:
        assert {p.name for p in ledger.paths} <= {"worker-0", "worker-1"}
        year = datetime.now(JST).year
        counted = annual_totals([ledger], Period.calendar_year(year))[Provision.SIGNING_STATUS]
    finally:
        ledger.close()
    assert answered == 40
    assert counted == {ALL_ROLES_VERIFIER: answered}
    assert Period.calendar_year(year).start.year == year


def test_sigkill_of_a_worker_under_load_loses_no_answered_count(pki: Pki, tmp_path: Path) -> None:
    """Clients keep calling while one worker is SIGKILLed: every answer a client saw is
    counted, and at most the calls that failed (answer lost after its count) more."""
    pki.publish_and_wait()
    state = tmp_path / "state"
    proc = _responder_process(pki, state)
    answered, failed, workers = Counter[str](), Counter[str](), set[str]()
    lock, stop = threading.Lock(), threading.Event()
    channels: list[grpc.Channel] = []

    def load(channel: grpc.Channel) -> None:
        stub = va_pb2_grpc.StatusServiceStub(channel)
        while not stop.is_set():
            try:
                _, call = stub.Check.with_call(CHECK, timeout=10)
            except grpc.RpcError:
                with lock:
                    failed["calls"] += 1
                continue
            served_by = dict(call.trailing_metadata() or ())[SERVED_BY]
            with lock:
                answered["calls"] += 1
                workers.add(str(served_by))

    try:
        (line,) = _lines(proc, 1)
        port = int(line.rsplit(" ", 1)[1])
        channels.extend(grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(6))
        wait_for(lambda: _serving(channels[0]), "the responder process to serve")
        threads = [threading.Thread(target=load, args=(c,)) for c in channels]
        for thread in threads:
            thread.start()
        wait_for(lambda: answered["calls"] >= 150, "answers before the kill", timeout=60)
        with lock:
            victim = int(next(iter(workers)))
        os.kill(victim, signal.SIGKILL)  # mid-load: calls of that worker are in flight
        after = answered["calls"] + 150
        wait_for(lambda: answered["calls"] >= after, "answers after the kill", timeout=60)
        stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        stop.set()
        _kill(proc, channels)
    with read_ledgers(state / "ledger") as ledger:
        year = datetime.now(JST).year
        counted = annual_totals([ledger], Period.calendar_year(year))[Provision.SIGNING_STATUS]
    seen = answered["calls"]
    assert seen >= 300
    assert seen <= counted[ALL_ROLES_VERIFIER] <= seen + failed["calls"]


def test_retention_of_the_ledger_and_audit_trail_purges_what_is_older(tmp_path: Path) -> None:
    """保存期間 of the project's own records: counts by day, disclosures by time."""
    ledger = Ledger(tmp_path / "ledger")
    old, new = datetime(2020, 4, 1, 12, tzinfo=UTC), datetime(2026, 4, 1, 12, tzinfo=UTC)
    for when in (old, new):
        ledger.record(
            "bank-a",
            {Provision.SIGNING_STATUS: 1},
            when,
            [Disclosure(when, "bank-a", Provision.SIGNING_RECORD, "CARD_SIGN:01", "name")],
        )
    assert ledger.purge(date(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC)) == (1, 1)
    assert [c.day for c in ledger.counts(date(2000, 1, 1), date(2100, 1, 1))] == [date(2026, 4, 1)]
    assert [d.time for d in ledger.disclosures(old, new + timedelta(1))] == [new]
    assert ledger.purge(date(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC)) == (0, 0)
    ledger.close()


def test_retention_responder_workers_purge_their_ledger_shards(pki: Pki, tmp_path: Path) -> None:
    """The responder's own stores: each worker drops counts and disclosures past the
    ledger and audit periods when it starts (and at each new day, Japan time)."""
    state = tmp_path / "state"
    shard = open_shard(state / "ledger", 0)
    now = datetime.now(UTC)
    for when in (now - timedelta(days=40), now - timedelta(days=1)):
        shard.record(
            "bank-a",
            {Provision.SIGNING_STATUS: 1},
            when,
            [Disclosure(when, "bank-a", Provision.SIGNING_RECORD, "CARD_SIGN:01", "name")],
        )
    shard.close()
    month = 30 * 86400.0
    extra = start_responder(
        pki, state, workers=1, insecure_loopback=True, loopback_verifier=ALL_ROLES_VERIFIER,
        retention_ledger=month, retention_audit=month,
    )  # fmt: skip
    try:

        def purged() -> bool:
            with read_ledgers(state / "ledger") as ledgers:
                days = {c.day for c in ledgers.counts(date(2000, 1, 1), date(2100, 1, 1))}
                audit = ledgers.disclosures(now - timedelta(days=400), now + timedelta(1))
            return len(days) == 1 and len(audit) == 1

        wait_for(purged, "the worker to purge its shard", timeout=30)
    finally:
        extra.close()
