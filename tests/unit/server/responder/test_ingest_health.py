"""The account of ingest attempts: a doubling, capped pause; one log line per change."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jpki_va.server.responder.ingest_health import IngestCondition, IngestHealth
from jpki_va.server.responder.storage import NoSpace


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_pause_doubling_to_the_cap_and_recovery_resets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    seen: list[IngestCondition] = []
    health = IngestHealth(tmp_path, 0.5, retry_cap=3.0, on_change=seen.append, monotonic=clock)
    caplog.set_level(logging.DEBUG, logger="jpki_va.server.responder.ingest_health")
    assert health.due()
    pauses = []
    for _ in range(5):
        health.failed(NoSpace("no space left on device (0 bytes free)"))
        pauses.append(health.condition.retry_in)
        assert not health.due()
        clock.now += health.condition.retry_in
        assert health.due()
    assert pauses == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert health.condition.no_space and health.condition.failures == 5
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None  # once, and no traceback

    health.failed(RuntimeError("something else"))  # another kind of failure: said again
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and errors[1].exc_info is not None
    assert not health.condition.no_space

    health.succeeded()
    assert health.condition == IngestCondition() and health.due()
    assert [c.failing for c in seen] == [True, True, False]
    health.succeeded()  # nothing to recover from: nothing said
    assert len([r for r in caplog.records if "recovered" in r.getMessage()]) == 1
