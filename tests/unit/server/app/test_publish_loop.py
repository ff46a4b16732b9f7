"""The signer's publish loop: woken by a registry commit, bounded by the delta interval.

A real registry (LMDB in a temporary directory) wakes the loop; the publish is a
function that records when it ran and whether it published, as the signer's does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jpki_va.server.app.signer_app import _publish_loop
from jpki_va.server.registry.transactions import Registry
from tests.support import wait_for


class Loop:
    """_publish_loop in a thread over a real registry's commits."""

    def __init__(self, registry: Registry, interval: float) -> None:
        self.started: list[float] = []
        self.changed = threading.Event()
        self.stop = threading.Event()
        registry.watch(self.changed.set)
        self._thread = threading.Thread(
            target=_publish_loop, args=(self._publish, self.stop, interval, self.changed)
        )
        self._thread.start()

    def _publish(self) -> object | None:
        self.started.append(time.monotonic())
        return object()  # published a snapshot

    def close(self) -> None:
        self.stop.set()
        self.changed.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    opened = Registry(tmp_path / "registry", map_size=1 << 24)
    try:
        yield opened
    finally:
        opened.close()


def _commit(registry: Registry, name: str) -> None:
    with registry.write() as tx:
        tx.set_meta(name, b"x")


def test_a_commit_wakes_the_publisher_without_waiting_out_the_interval(
    registry: Registry,
) -> None:
    loop = Loop(registry, interval=120.0)  # the timer alone would not fire in this test
    try:
        _commit(registry, "loss")
        wait_for(lambda: loop.started, "the publish a commit brings", 60)
    finally:
        loop.close()


def test_no_two_snapshots_within_the_interval(registry: Registry) -> None:
    loop = Loop(registry, interval=1.5)
    try:
        _commit(registry, "first")
        wait_for(lambda: loop.started, "the first publish", 60)
        _commit(registry, "second")  # at once: this one waits for the interval
        wait_for(lambda: len(loop.started) >= 2, "the second publish", 60)
    finally:
        loop.close()
    assert loop.started[1] - loop.started[0] >= 1.5


def test_a_failed_write_wakes_nothing(registry: Registry) -> None:
    calls: list[None] = []
    registry.watch(lambda: calls.append(None))
    with pytest.raises(RuntimeError), registry.write() as tx:
        tx.set_meta("never", b"x")
        raise RuntimeError("aborted")
    assert calls == []
    _commit(registry, "kept")
    assert calls == [None]
