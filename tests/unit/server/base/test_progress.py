"""Progress: a bar on a terminal beside text logs, log lines otherwise, quiet when quick."""

from __future__ import annotations

import io
import logging

import pytest

from jpki_va.server.base.progress import LOG_FORMAT_ENV, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Slow(Progress):
    QUIET_SECONDS = 0.0  # show from the first item
    REDRAW_SECONDS = 0.0


def test_a_bar_on_a_terminal_with_text_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOG_FORMAT_ENV, "text")
    screen = Terminal()
    with Slow("index 7", 4, stream=screen) as bar:
        for _ in bar.track(range(4)):
            pass
    drawn = screen.getvalue()
    assert drawn.startswith("\rindex 7") and drawn.endswith("\n")
    assert "[" + "#" * Progress.WIDTH + "]" in drawn and "100.0%" in drawn


def test_lines_in_the_log_format_when_no_one_watches(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(LOG_FORMAT_ENV, "json")
    screen = Terminal()  # a terminal, but JSON logs: lines, not a bar
    with (
        caplog.at_level(logging.INFO, "jpki_va.progress"),
        Slow("full snapshot 3", 100, stream=screen) as bar,
    ):
        for _ in range(100):
            bar.advance()
    assert screen.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines[:3]] == [
        "full snapshot 3: 25 of 100", "full snapshot 3: 50 of 100", "full snapshot 3: 75 of 100",
    ]  # fmt: skip
    assert lines[-1].startswith("full snapshot 3: 100 of 100 (100%)") and "(done)" in lines[-1]


def test_a_quick_operation_shows_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(LOG_FORMAT_ENV, "text")
    screen = Terminal()
    with caplog.at_level(logging.INFO), Progress("index 1", 10, stream=screen) as bar:
        bar.advance(10)
    assert screen.getvalue() == "" and not caplog.records
