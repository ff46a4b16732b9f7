"""In rotation or out: the staleness bound and a refused newest snapshot."""

from __future__ import annotations

import pytest

from jpki_va.server.responder.rotation import Rotation


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_index_is_out_of_rotation() -> None:
    state = Rotation(5.0, _Clock()).judge(None, 3, newest_refused=False)
    assert not state.in_rotation
    assert state.reason == "no index yet"


def test_a_replica_at_the_newest_is_in_rotation() -> None:
    rotation = Rotation(5.0, _Clock())
    assert rotation.judge(7, 7, newest_refused=False).in_rotation
    assert rotation.judge(7, 0, newest_refused=False).in_rotation  # the store is empty


def test_behind_within_the_bound_stays_then_leaves_then_comes_back() -> None:
    clock = _Clock()
    rotation = Rotation(5.0, clock)
    assert rotation.judge(7, 8, newest_refused=False).in_rotation
    clock.now += 5.0
    assert rotation.judge(7, 9, newest_refused=False).in_rotation  # at the bound
    clock.now += 0.1
    state = rotation.judge(7, 9, newest_refused=False)
    assert not state.in_rotation
    assert state.reason is not None and "behind the newest snapshot 9 for 5.1s" in state.reason
    assert rotation.judge(9, 9, newest_refused=False).in_rotation
    # Caught up: the next lag is counted afresh.
    clock.now += 1.0
    assert rotation.judge(9, 10, newest_refused=False).in_rotation


def test_a_refused_newest_leaves_at_once() -> None:
    rotation = Rotation(60.0, _Clock())
    state = rotation.judge(7, 8, newest_refused=True)
    assert not state.in_rotation
    assert state.reason == "refused the newest snapshot (8); at 7"


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="> 0 seconds"):
        Rotation(0.0)
