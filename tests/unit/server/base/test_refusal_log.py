"""The refusal log: caller values bounded and escaped, each reason once per window."""

from __future__ import annotations

import logging

import pytest

from jpki_va.server.base.refusal_log import LIMIT, MAX_REASONS, OTHER, RefusalLog, bounded

LOGGER = "test.refusals"


class Clock:
    """Seconds the test sets: the windows depend on nothing else."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def refusals(clock: Clock) -> RefusalLog:
    return RefusalLog(logging.getLogger(LOGGER), window=10.0, clock=clock)


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_bounded_cuts_long_values_and_says_how_much() -> None:
    assert bounded("short") == "short"
    assert bounded("x" * 8_192) == "x" * LIMIT + "…(+8128 chars)"
    assert bounded(b"\xff" * 3) == "\ufffd" * 3  # bytes that are no UTF-8, replaced


def test_bounded_escapes_what_could_forge_or_break_a_line() -> None:
    text = bounded('id"\n{"level": "info", "message": "forged"}\r\x1b[2J\t')
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\t" not in text
    assert text.startswith('id"\\n{"level"')
    assert len(bounded("\x00" * 1000)) < 4 * LIMIT + 20  # escaping grows, boundedly


def test_a_reason_is_logged_once_per_window_then_with_the_count(
    refusals: RefusalLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(500):
            refusals.refused("bad request", "y" * 1000)
        assert _lines(caplog) == ["bad request: " + bounded("y" * 1000)]
        clock.now += 10.0
        refusals.refused("bad request", "next")
    assert _lines(caplog)[1] == "bad request: next (499 more in the last 10.0 s)"


def test_reasons_have_windows_of_their_own(
    refusals: RefusalLog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        refusals.refused("first reason", "a")
        refusals.refused("second reason", "b")
        refusals.refused("first reason", "c")
    assert _lines(caplog) == ["first reason: a", "second reason: b"]


def test_flush_logs_the_counts_of_ended_windows_and_final_all(
    refusals: RefusalLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            refusals.refused("old", "o")
        clock.now += 6.0
        for _ in range(2):
            refusals.refused("new", "n")
        refusals.refused("quiet", "q")
        clock.now += 5.0
        refusals.flush()  # "old" ended; "new" and "quiet" have not
        assert _lines(caplog)[3:] == ["old: 2 more in the last 11.0 s"]
        refusals.flush(final=True)  # stopping: say what is left, and nothing twice
        refusals.flush(final=True)
    assert _lines(caplog)[4:] == ["new: 1 more in the last 5.0 s"]
    # After a flush the next refusal of a reason is logged at once again.
    with caplog.at_level(logging.INFO, logger=LOGGER):
        refusals.refused("old", "again")
    assert _lines(caplog)[-1] == "old: again"


def test_reasons_past_the_limit_share_one_bucket(
    refusals: RefusalLog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for i in range(MAX_REASONS + 50):
            refusals.refused(f"reason {i}", "d")
    lines = _lines(caplog)
    assert len(lines) == MAX_REASONS + 1
    assert lines[-1].startswith(f"{OTHER}: reason {MAX_REASONS}: d")


def test_a_server_fault_keeps_its_level_and_its_room(
    refusals: RefusalLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            refusals.refused("internal error in M", "z" * 300, level=logging.ERROR, limit=200)
        clock.now += 10.0
        refusals.flush()  # the count goes out at the level its first line had
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [logging.ERROR, logging.ERROR]
    assert records[0].getMessage() == "internal error in M: " + bounded("z" * 300, 200)
    assert records[1].getMessage() == "internal error in M: 2 more in the last 10.0 s"
