"""The feed's batching, limits and shutdown, over a tiny fake of the index's two
feed methods (the real index is exercised in tests/test_mappings_records_feed.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from jpki_va.core.domain import CertKind, CrlReason, Loss, LossCause, Provision, Role, Verifier
from jpki_va.server.law.entitlements import NotEntitled
from jpki_va.server.law.issuer_compromise import Compromise
from jpki_va.server.model.registry_values import LossEvent
from jpki_va.server.responder.revocation_feed import FeedClosed, RevocationFeed, TooManyWatches
from jpki_va.server.responder.status import IndexHolder

T0 = datetime(2026, 4, 1, tzinfo=UTC)
AUTH = Verifier("auth", frozenset({Role.AUTH_VERIFIER}), (b"\0" * 32,))
BOTH = Verifier("auth", frozenset({Role.AUTH_VERIFIER, Role.SIGNING_VERIFIER}), (b"\0" * 32,))
SIGNING = Verifier("auth", frozenset({Role.SIGNING_VERIFIER}), (b"\0" * 32,))
TOKEN_ONLY = Verifier("token", frozenset({Role.SPECIFIC_AUTH_VERIFIER}), (b"\1" * 32,))


def _event(sequence: int, kind: CertKind) -> LossEvent:
    return LossEvent(
        sequence, kind, sequence, "131016", b"k",
        Loss(T0, LossCause.HOLDER_REQUEST, CrlReason.UNSPECIFIED), T0,
    )  # fmt: skip


class _Index:
    def __init__(self, events: list[LossEvent], through: int) -> None:
        self.events, self.through = events, through
        self.compromises: dict[bytes, Compromise] = {}

    def event_batch(self, since: int, limit: int) -> tuple[list[LossEvent], int]:
        after = [e for e in self.events if e.sequence > since]
        if len(after) > limit:
            return after[:limit], after[limit - 1].sequence
        return after, self.through


class _Holder(IndexHolder):
    def __init__(self, index: _Index) -> None:
        self.index = index

    def get(self) -> _Index:  # type: ignore[override]
        return self.index


def test_batches_filter_kinds_and_the_watermark_covers_the_rest() -> None:
    kinds = [CertKind.CARD_AUTH, CertKind.CARD_SIGN, CertKind.MOBILE_AUTH, CertKind.CARD_SIGN]
    index = _Index([_event(i + 1, k) for i, k in enumerate(kinds)], through=7)
    index.compromises = {
        b"s": Compromise(b"s", CertKind.CARD_SIGN, T0),
        b"a": Compromise(b"a", CertKind.CARD_AUTH, T0),
    }
    feed = RevocationFeed(_Holder(index), batch_limit=2, poll_seconds=0.01)
    done = threading.Event()
    batches = feed.watch(lambda: AUTH, 0, done=done)
    first, second = next(batches), next(batches)
    assert [e.sequence for e in first.events] == [1] and first.through == 2
    assert [c.key_id for c in first.compromises] == [b"a"]  # only the kinds it may receive
    assert [e.sequence for e in second.events] == [3] and second.through == 7
    assert not second.compromises  # announced once per watch
    assert sum(first.counts.values()) + sum(second.counts.values()) == 2
    index.events.append(_event(8, CertKind.MOBILE_AUTH))
    index.through = 8
    third = next(batches)
    assert [e.sequence for e in third.events] == [8] and third.through == 8
    done.set()
    assert list(batches) == []


def test_limits_entitlements_and_shutdown() -> None:
    feed = RevocationFeed(_Holder(_Index([], 0)), max_watches=1, poll_seconds=0.01)
    with pytest.raises(NotEntitled, match=r"any kind: missing role .*AUTH_VERIFIER"):
        next(feed.watch(lambda: TOKEN_ONLY, 0))
    with pytest.raises(NotEntitled):
        next(feed.watch(lambda: AUTH, 0, [CertKind.CARD_SIGN]))
    for since in (-1, (1 << 64) - 1):  # uint64 on the wire
        with pytest.raises(ValueError, match="since must be 0 to"):
            next(feed.watch(lambda: AUTH, since))
    open_watch = feed.watch(lambda: AUTH, 5)
    assert next(open_watch).through == 5  # a replica behind the watcher never goes back
    with pytest.raises(TooManyWatches):
        next(feed.watch(lambda: AUTH, 0))
    feed.close()
    with pytest.raises(FeedClosed, match="since=5"):
        next(open_watch)
    with pytest.raises(FeedClosed):
        next(feed.watch(lambda: AUTH, 0))


def test_a_registry_change_narrows_or_ends_an_open_watch() -> None:
    index = _Index([_event(1, CertKind.CARD_AUTH), _event(2, CertKind.CARD_SIGN)], through=2)
    feed = RevocationFeed(_Holder(index), poll_seconds=0.01)
    registry = [BOTH]  # what the registry says of the watcher now
    batches = feed.watch(lambda: registry[0], 0)
    first = next(batches)
    assert [e.sequence for e in first.events] == [1, 2]
    # AUTH_VERIFIER taken away: its events are neither sent nor counted.
    registry[0] = SIGNING
    index.events += [_event(3, CertKind.CARD_AUTH), _event(4, CertKind.CARD_SIGN)]
    index.through = 4
    second = next(batches)
    assert [e.sequence for e in second.events] == [4] and second.through == 4
    assert dict(second.counts) == {Provision.SIGNING_STATUS: 1}
    # Nothing left it may receive: the watch ends, saying what is missing and where to resume.
    registry[0] = TOKEN_ONLY
    index.events.append(_event(5, CertKind.CARD_SIGN))
    index.through = 5
    with pytest.raises(NotEntitled, match=r"missing role .*SIGNING_VERIFIER.*since=4"):
        next(batches)
