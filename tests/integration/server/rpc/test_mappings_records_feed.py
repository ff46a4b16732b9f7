"""Mappings, signing records and the revocation feed on a real signer and responder.

The entitlement rows of these services are in tests/test_mtls.py (over mTLS); here
the law's rules: who corresponds to whom and with which status (第18条4項・5項,
第37条3項), when a signing record is given and how it is audited (第18条3項), and
that a cut watch resumes without gaps or repeats.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.client import (
    FailedPrecondition,
    InvalidArgument,
    MappedCertificate,
    NotFound,
    RevocationEvent,
    SigningRecord,
    Status,
    Unavailable,
    VaClient,
)
from jpki_va.core.clock import JST, FixedClock
from jpki_va.core.domain import CertKind, LinkType, LossCause, Provision, Role
from jpki_va.protos import record_pb2, record_pb2_grpc, signer_pb2, va_pb2, verifiers_pb2
from jpki_va.server.law.signing_record import NotDisclosable
from jpki_va.server.ledger.provisions import read_ledgers
from jpki_va.server.responder.mappings import Mapper
from jpki_va.server.responder.signing_record_lookup import SigningRecords
from jpki_va.server.responder.status import IndexHolder, IndexStatusSource, IssuerCompromiseSource
from jpki_va.server.rpc.server_common import SERVED_BY
from tests.support import (
    ALL_ROLES_VERIFIER,
    JPKI_VA,
    REPO,
    ExtraResponder,
    Issued,
    Pki,
    start_responder,
    throwaway_certificate,
    wait_for,
)

HOLDER = ("試験 太郎", "千代田区1-1", "1990-01-01", "男")  # what Pki.issue registers
READER = "v-reader"  # signing records: only this test module's calls
WATCHER = "v-watcher"  # the feed: only this test module's calls
CRASHER = "v-crash"  # the SIGKILL test


@dataclass
class Holder:
    card_sign: Issued
    card_auth: Issued
    mobile_sign: Issued
    mobile_auth: Issued
    renewed_sign: Issued  # CARD_SIGN issued later: supersedes card_sign
    mobile_sign_2: Issued  # on renewed_sign


@dataclass
class World:
    pki: Pki
    holder: Holder
    other: Issued  # another holder's CARD_SIGN
    consenting: Issued  # CARD_SIGN whose holder consented to READER
    consenting_mobile: Issued
    consenting_auth: Issued
    silent: Issued  # CARD_SIGN whose holder did not consent
    lost: Issued  # CARD_SIGN that lost effect, holder consented

    def client(self, verifier: str | None = None) -> VaClient:
        return VaClient(self.pki.responder_address, insecure=True, verifier=verifier)


def _add_verifier(pki: Pki, name: str, roles: set[Role]) -> None:
    pki.signer_stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=name,
            roles=[int(r) for r in roles],  # type: ignore[misc]
            client_certificate_der=[throwaway_certificate(name).public_bytes(Encoding.DER)],
        ),
        timeout=30,
    )


def _consent(pki: Pki, resident_code: str, verifier: str, grant: bool = True) -> None:
    pki.signer_stub.RecordConsent(
        signer_pb2.RecordConsentRequest(
            resident_code=resident_code, verifier=verifier, grant=grant
        ),
        timeout=30,
    )


def _lose(pki: Pki, issued: Issued, cause: LossCause = LossCause.HOLDER_REQUEST) -> None:
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=int(issued.kind),  # type: ignore[arg-type]
            serial=issued.serial.to_bytes(8, "big"),
            cause=int(cause),  # type: ignore[arg-type]
        ),
        timeout=30,
    )


@pytest.fixture(scope="module")
def world(pki: Pki) -> World:
    for name in (READER, WATCHER, CRASHER):
        _add_verifier(pki, name, {Role.SIGNING_VERIFIER, Role.AUTH_VERIFIER})
    code = "71000000001"
    card_sign = pki.issue(CertKind.CARD_SIGN, resident_code=code)
    card_auth = pki.issue(CertKind.CARD_AUTH, resident_code=code)
    mobile_sign = pki.issue(CertKind.MOBILE_SIGN, resident_code=code, card=card_sign)
    mobile_auth = pki.issue(CertKind.MOBILE_AUTH, resident_code=code, card=card_sign)
    time.sleep(1.1)  # the renewals end a second later (notAfter has whole seconds)
    renewed = pki.issue(CertKind.CARD_SIGN, resident_code=code)
    mobile_sign_2 = pki.issue(CertKind.MOBILE_SIGN, resident_code=code, card=renewed)
    holder = Holder(card_sign, card_auth, mobile_sign, mobile_auth, renewed, mobile_sign_2)
    consenting_code = "71000000003"
    consenting = pki.issue(CertKind.CARD_SIGN, resident_code=consenting_code)
    world = World(
        pki=pki,
        holder=holder,
        other=pki.issue(CertKind.CARD_SIGN, resident_code="71000000002"),
        consenting=consenting,
        consenting_mobile=pki.issue(
            CertKind.MOBILE_SIGN, resident_code=consenting_code, card=consenting
        ),
        consenting_auth=pki.issue(CertKind.CARD_AUTH, resident_code=consenting_code),
        silent=pki.issue(CertKind.CARD_SIGN, resident_code="71000000004"),
        lost=pki.issue(CertKind.CARD_SIGN, resident_code="71000000005"),
    )
    for code_ in (consenting_code, "71000000005"):
        _consent(pki, code_, READER)
    _lose(pki, world.lost)
    pki.publish_and_wait()
    return world


def _found(answer: list[MappedCertificate]) -> dict[int, tuple[LinkType, Status]]:
    return {m.status.serial: (m.type, m.status.status) for m in answer}


# mappings --------------------------------------------------------------------------------
def test_card_sign_to_mobile_sign_gives_every_unexpired_one_with_its_status(
    world: World,
) -> None:
    h = world.holder
    with world.client() as va:
        answer = va.map(
            kind=CertKind.CARD_SIGN, serial=h.renewed_sign.serial, to=CertKind.MOBILE_SIGN
        )
    # Per person: the mobile certificate of the superseded card is in its validity
    # period, so it is given too, revoked by the cascade.
    assert _found(answer) == {
        h.mobile_sign.serial: (LinkType.CARD_SIGN_MOBILE_SIGN, Status.REVOKED),
        h.mobile_sign_2.serial: (LinkType.CARD_SIGN_MOBILE_SIGN, Status.GOOD),
    }
    cascaded = next(m for m in answer if m.status.serial == h.mobile_sign.serial)
    assert cascaded.status.revocation is not None
    assert cascaded.status.revocation.cause is LossCause.CARD_CERT_LOST_EFFECT


def test_every_direction_of_the_three_mappings(world: World) -> None:
    h = world.holder
    cases = [
        (h.mobile_sign, CertKind.CARD_SIGN, [h.card_sign, h.renewed_sign]),
        (h.card_auth, CertKind.CARD_SIGN, [h.card_sign, h.renewed_sign]),
        (h.renewed_sign, CertKind.CARD_AUTH, [h.card_auth]),
        (h.card_auth, CertKind.MOBILE_AUTH, [h.mobile_auth]),
        (h.mobile_auth, CertKind.CARD_AUTH, [h.card_auth]),
        (h.card_sign, CertKind.CARD_SIGN, [h.renewed_sign]),  # renewal: old -> new
        (h.renewed_sign, CertKind.CARD_SIGN, []),  # nothing renewed it
    ]
    with world.client() as va:
        for source, to, expected in cases:
            answer = va.map(kind=source.kind, serial=source.serial, to=to)
            assert {m.status.serial for m in answer} == {e.serial for e in expected}, (
                source.kind,
                to,
            )
            assert all(m.status.kind is to for m in answer)
            assert world.other.serial not in {m.status.serial for m in answer}
        # Without --to: every mapping the verifier may receive, each marked.
        everything = va.map(kind=CertKind.CARD_SIGN, serial=h.card_sign.serial)
    assert {(m.type, m.status.serial) for m in everything} == {
        (LinkType.CARD_SIGN_MOBILE_SIGN, h.mobile_sign.serial),
        (LinkType.CARD_SIGN_MOBILE_SIGN, h.mobile_sign_2.serial),
        (LinkType.CARD_AUTH_CARD_SIGN, h.card_auth.serial),
        (LinkType.RENEWAL, h.renewed_sign.serial),
    }


def test_mapping_refusals_are_clear(world: World) -> None:
    with world.client() as va:
        with pytest.raises(InvalidArgument, match="no mapping from MOBILE_SIGN to CARD_AUTH"):
            va.map(kind=CertKind.MOBILE_SIGN, serial=world.holder.mobile_sign.serial,
                   to=CertKind.CARD_AUTH)  # fmt: skip
        with pytest.raises(NotFound, match="not known"):
            va.map(kind=CertKind.CARD_SIGN, serial=0x0123456789ABCDEF, to=CertKind.MOBILE_SIGN)


def test_the_validity_period_decides_not_the_loss(world: World) -> None:
    """Served by the same Mapper the responder uses, at a later time (a FixedClock)."""
    h = world.holder
    first_end = world.pki.check(CertKind.MOBILE_SIGN, h.mobile_sign.serial).not_after
    second_end = world.pki.check(CertKind.MOBILE_SIGN, h.mobile_sign_2.serial).not_after
    assert second_end.ToDatetime() > first_end.ToDatetime()
    holder = IndexHolder(world.pki.responder.config.index_dir)
    wait_for(holder.refresh, "the live index to be free")
    try:
        verifier = holder.get().verifiers.by_id[ALL_ROLES_VERIFIER]
        source = IssuerCompromiseSource(IndexStatusSource(holder), holder)
        clock = FixedClock(first_end.ToDatetime(tzinfo=UTC))  # the last moment of its period
        mapper = Mapper(holder, source, clock)
        at_end = mapper.map(
            verifier, CertKind.CARD_SIGN, h.renewed_sign.serial, CertKind.MOBILE_SIGN
        )
        assert {m.answer.serial for m in at_end.certificates} == {
            h.mobile_sign.serial,
            h.mobile_sign_2.serial,
        }
        clock.advance(timedelta(seconds=1))
        after = mapper.map(
            verifier, CertKind.CARD_SIGN, h.renewed_sign.serial, CertKind.MOBILE_SIGN
        )
        assert [m.answer.serial for m in after.certificates] == [h.mobile_sign_2.serial]
        # A signing record is refused once the certificate expired (lost effect).
        records = SigningRecords(holder, source, clock)
        reader = holder.get().verifiers.by_id[READER]
        clock.set(clock.now() + timedelta(days=3650 * 2))
        with pytest.raises(NotDisclosable, match="expired"):
            records.get(reader, CertKind.CARD_SIGN, world.consenting.serial)
    finally:
        holder.close()


def test_the_map_command(world: World) -> None:
    h = world.holder
    result = _cli(
        "map", "--server", world.pki.responder_address, "--insecure-loopback",
        "--kind", "card-sign", "--serial", f"{h.renewed_sign.serial:X}", "--to", "mobile-sign",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    statuses = {int(c["serial"], 16): c["status"] for c in body["certificates"]}
    assert statuses == {h.mobile_sign.serial: "REVOKED", h.mobile_sign_2.serial: "GOOD"}
    text = _cli(
        "map", "--server", world.pki.responder_address, "--insecure-loopback",
        "--kind", "mobile-sign", "--serial", f"{h.mobile_sign.serial:X}", "--to", "card-auth",
    )  # fmt: skip
    assert text.returncode == 3
    assert text.stderr.startswith("jpki-va map: error: server error INVALID_ARGUMENT")
    assert len(text.stderr.strip().splitlines()) == 1


# signing records ---------------------------------------------------------------------------
def _ledger_of(pki: Pki | ExtraResponder) -> Path:
    return pki.responder.config.ledger_dir


def _disclosures(ledger_dir: Path, verifier: str) -> list[dict[str, str]]:
    ledger = read_ledgers(ledger_dir)
    try:
        today = datetime.now(JST)
        found = ledger.disclosures(today - timedelta(days=1), today + timedelta(days=1), verifier)
        return [d.to_json() for d in found]
    finally:
        ledger.close()


def _count(ledger_dir: Path, verifier: str, provision: Provision) -> int:
    ledger = read_ledgers(ledger_dir)
    try:
        today = datetime.now(JST).date()
        return sum(
            c.count
            for c in ledger.counts(today - timedelta(days=1), today + timedelta(days=1))
            if c.verifier_id == verifier and c.provision is provision
        )
    finally:
        ledger.close()


def test_signing_records_with_consent_are_given_and_audited(world: World) -> None:
    with world.client(READER) as va:
        card = va.signing_record(kind=CertKind.CARD_SIGN, serial=world.consenting.serial)
        mobile = va.signing_record(kind=CertKind.MOBILE_SIGN, serial=world.consenting_mobile.serial)
    assert isinstance(card, SigningRecord)
    assert (card.name, card.address, card.birth_date, card.sex) == HOLDER
    assert (card.kind, card.serial) == (CertKind.CARD_SIGN, world.consenting.serial)
    assert mobile.serial == world.consenting_mobile.serial
    audit = _disclosures(_ledger_of(world.pki), READER)
    assert [(d["provision"], d["subject"]) for d in audit] == [
        ("SIGNING_RECORD", f"CARD_SIGN:{world.consenting.serial:X}"),
        ("SIGNING_RECORD", f"MOBILE_SIGN:{world.consenting_mobile.serial:X}"),
    ]
    # Who got whose record when, and which fields: not the personal data itself.
    assert all(HOLDER[0] not in json.dumps(d, ensure_ascii=False) for d in audit)
    assert "name,address,birth_date,sex" in audit[0]["detail"]
    # 証跡照会, as an operator runs it.
    today = datetime.now(JST).date().isoformat()
    report = subprocess.run(
        [*JPKI_VA, "report", "audit", "--from", today, "--to", today,
         "--verifier", READER, "--ledger", str(_ledger_of(world.pki)), "--format", "json"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert [e["subject"] for e in json.loads(report.stdout)] == [d["subject"] for d in audit]


def test_refused_records_are_neither_given_nor_counted(world: World) -> None:
    before = _count(_ledger_of(world.pki), READER, Provision.SIGNING_RECORD)
    audited = len(_disclosures(_ledger_of(world.pki), READER))
    with world.client(READER) as va:
        with pytest.raises(FailedPrecondition, match="not consented"):
            va.signing_record(kind=CertKind.CARD_SIGN, serial=world.silent.serial)
        with pytest.raises(FailedPrecondition, match="lost effect"):
            va.signing_record(kind=CertKind.CARD_SIGN, serial=world.lost.serial)
        with pytest.raises(InvalidArgument, match="not a signing certificate"):
            va.signing_record(kind=CertKind.CARD_AUTH, serial=world.consenting_auth.serial)
        with pytest.raises(NotFound):
            va.signing_record(kind=CertKind.CARD_SIGN, serial=0x0123456789ABCDEF)
    # The holder consented to READER, not to the all-roles verifier.
    with world.client() as va, pytest.raises(FailedPrecondition, match="not consented"):
        va.signing_record(kind=CertKind.CARD_SIGN, serial=world.consenting.serial)
    assert _count(_ledger_of(world.pki), READER, Provision.SIGNING_RECORD) == before
    assert len(_disclosures(_ledger_of(world.pki), READER)) == audited


def test_a_withdrawn_consent_reaches_the_responder_by_delta(world: World) -> None:
    code = "71000000006"
    issued = world.pki.issue(CertKind.CARD_SIGN, resident_code=code)
    _consent(world.pki, code, READER)
    world.pki.publish_and_wait(full=False)
    result = _cli(
        "record", "--server", world.pki.responder_address, "--insecure-loopback",
        "--verifier", READER, "--serial", f"{issued.serial:X}", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == HOLDER[0]
    _consent(world.pki, code, READER, grant=False)
    world.pki.publish_and_wait(full=False)
    refused = _cli(
        "record", "--server", world.pki.responder_address, "--insecure-loopback",
        "--verifier", READER, "--serial", f"{issued.serial:X}",
    )  # fmt: skip
    assert refused.returncode == 3
    assert "FAILED_PRECONDITION" in refused.stderr
    assert "not consented" in refused.stderr


# the feed ----------------------------------------------------------------------------------
def _expected_events(pki: Pki, after: int, through: int) -> list[int]:
    with pki.live_index() as index:
        return [e.sequence for e in index.events_since(after) if e.sequence <= through]


def _collect(va: VaClient, since: int, until: int, **kwargs: object) -> tuple[list[int], int]:
    """Events of a watch from `since` until its `through` reaches `until`; then cut it."""
    seen: list[int] = []
    through = since
    updates = va.watch(since=since, timeout=30, **kwargs)  # type: ignore[arg-type]
    try:
        for update in updates:
            seen.extend(e.sequence for e in update.events)
            through = update.through
            if through >= until:
                break
    finally:
        updates.close()
    return seen, through


def _event_sequence(pki: Pki) -> int:
    with pki.live_index() as index:
        return index.event_sequence


def test_a_cut_watch_resumes_without_gaps_or_repeats(world: World) -> None:
    pki = world.pki
    victims = [pki.issue(CertKind.CARD_AUTH) for _ in range(4)]
    _lose(pki, victims[0])
    _lose(pki, victims[1], LossCause.RECORD_ERROR)
    pki.publish_and_wait(full=False)
    first_mark = _event_sequence(pki)
    with world.client(WATCHER) as va:
        seen, through = _collect(va, 0, first_mark)
        assert through == first_mark
        # More losses while nobody watches: one by delta, one by a full snapshot.
        _lose(pki, victims[2])
        pki.publish_and_wait(full=False)
        _lose(pki, victims[3])
        pki.publish_and_wait(full=True)
        second_mark = _event_sequence(pki)
        more, end = _collect(va, through, second_mark)
    assert end == second_mark
    assert not set(seen) & set(more)
    assert seen + more == _expected_events(pki, 0, second_mark)
    assert len(more) >= 2
    # Each event delivered is counted as status of its kind (第41条).
    assert _count(_ledger_of(pki), WATCHER, Provision.AUTH_STATUS) + _count(
        _ledger_of(pki), WATCHER, Provision.SIGNING_STATUS
    ) == len(seen) + len(more)


def test_an_open_watch_sees_a_new_delta(world: World) -> None:
    pki = world.pki
    start = _event_sequence(pki)
    victim = pki.issue(CertKind.CARD_SIGN)
    pki.publish_and_wait(full=False)
    received: list[RevocationEvent] = []
    errors: list[BaseException] = []
    with world.client(WATCHER) as va:
        updates = va.watch(since=start, kinds=[CertKind.CARD_SIGN], timeout=60)

        def read() -> None:
            try:
                for update in updates:
                    received.extend(update.events)
                    if any(e.serial == victim.serial for e in update.events):
                        return
            except BaseException as exc:  # reported to the test thread
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        _lose(pki, victim, LossCause.RECORD_ERROR)
        pki.publish_and_wait(full=False)
        reader.join(30)
        assert not reader.is_alive() and not errors
    event = next(e for e in received if e.serial == victim.serial)
    assert (event.kind, event.cause) == (CertKind.CARD_SIGN, LossCause.RECORD_ERROR)
    assert all(e.kind is CertKind.CARD_SIGN for e in received)


def test_the_watch_command_prints_events_and_where_to_resume(world: World) -> None:
    mark = _event_sequence(world.pki)
    expected = _expected_events(world.pki, 0, mark)
    result = _cli(
        "watch", "--server", world.pki.responder_address, "--insecure-loopback",
        "--verifier", WATCHER, "--json", "--limit", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["sequence"] for line in lines] == expected[:2]
    assert f"resume with --since {expected[1]}" in result.stderr
    bad = _cli("watch", "--server", world.pki.responder_address, "--insecure-loopback",
               "--since", "-1")  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip() == "jpki-va watch: error: --since must not be negative"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_the_watch_command_ends_on_a_signal_and_says_where_to_resume(
    world: World, signum: signal.Signals
) -> None:
    """Ctrl-C, or a supervisor's SIGTERM, ends it cleanly. It is started as a shell
    starts a background job, SIGINT ignored, which it must not depend on."""
    expected = _expected_events(world.pki, 0, _event_sequence(world.pki))
    proc = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$@"', "sh",
         *JPKI_VA, "watch", "--server", world.pki.responder_address,
         "--insecure-loopback", "--verifier", WATCHER],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"#{expected[0]} ")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "resume with --since" in err
    assert "Traceback" not in err


# durability ------------------------------------------------------------------------------
@pytest.fixture
def crash_responder(world: World, tmp_path: Path) -> Iterator[ExtraResponder]:
    _consent(world.pki, "71000000003", CRASHER)
    world.pki.publish_and_wait(full=False)
    extra = start_responder(
        world.pki, tmp_path / "state", insecure_loopback=True,
        loopback_verifier=ALL_ROLES_VERIFIER,
    )  # fmt: skip
    try:
        yield extra
    finally:
        extra.close()


def _record_call(address: str, serial: int) -> str:
    """One GetSigningRecord as CRASHER; returns the worker that answered."""
    with grpc.insecure_channel(address) as channel:
        stub = record_pb2_grpc.RecordServiceStub(channel)
        _, call = stub.GetSigningRecord.with_call(
            record_pb2.GetSigningRecordRequest(
                cert=va_pb2.KindSerial(
                    kind=va_pb2.CERT_KIND_CARD_SIGN, serial=serial.to_bytes(8, "big")
                )
            ),
            timeout=10,
            metadata=(("x-jpki-verifier", CRASHER),),
        )
    return str(dict(call.trailing_metadata() or ())[SERVED_BY])


def test_sigkill_between_disclosures_loses_nothing_answered(
    world: World, crash_responder: ExtraResponder
) -> None:
    address, serial = crash_responder.address, world.consenting.serial
    worker = wait_for(lambda: _try(lambda: _record_call(address, serial)), "the responder")
    answered = 1
    # A watch that must carry on across the crash by itself.
    mark = _event_sequence(world.pki)
    victim = world.pki.issue(CertKind.CARD_SIGN)
    watched: list[int] = []
    with VaClient(address, insecure=True, verifier=CRASHER) as va:
        updates = va.watch(since=mark, resume=True, max_reconnects=20, timeout=60)
        first = next(updates)
        watched.extend(e.sequence for e in first.events)
        stop = threading.Event()

        def hammer() -> None:
            nonlocal answered
            while not stop.is_set():
                try:
                    _record_call(address, serial)
                except grpc.RpcError:
                    return
                answered += 1

        caller = threading.Thread(target=hammer)
        caller.start()
        wait_for(lambda: answered >= 6, "a few disclosures")
        os.kill(int(worker), signal.SIGKILL)
        caller.join(30)
        stop.set()
        seen = answered
        audit = _disclosures(_ledger_of(crash_responder), CRASHER)
        counted = _count(_ledger_of(crash_responder), CRASHER, Provision.SIGNING_RECORD)
        # Every answer a client saw was audited, then counted, before it left. The one
        # in flight at the kill may be audited and counted but not answered, or only
        # audited (the audit goes to disk first): never answered without both.
        assert seen <= counted <= len(audit) <= seen + 1
        # The supervisor starts another worker; the watch resumes on it.
        _lose(world.pki, victim)
        world.pki.publish_and_wait(full=False)
        for update in updates:
            watched.extend(e.sequence for e in update.events)
            if update.through >= _event_sequence(world.pki):
                break
        updates.close()
    assert len(watched) == len(set(watched))
    assert watched == _expected_events(world.pki, mark, _event_sequence(world.pki))
    # The new worker took the dead one's slot: it writes the same ledger shard.
    _record_call(address, serial)
    ledger_dir = _ledger_of(crash_responder)
    assert sorted(p.name for p in ledger_dir.iterdir() if p.is_dir()) == ["worker-0"]
    assert _count(ledger_dir, CRASHER, Provision.SIGNING_RECORD) == counted + 1


def _try(call: Callable[[], str]) -> str | None:
    try:
        return call()
    except grpc.RpcError:
        return None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JPKI_VA, *args],
        capture_output=True, text=True, cwd=REPO, check=False, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_unavailable_is_what_a_closed_port_gives(world: World) -> None:
    # The client's view of a dead responder, which the resuming watch retries on.
    with VaClient("127.0.0.1:1", insecure=True, timeout=2) as va, pytest.raises(Unavailable):
        next(va.watch(since=0))
