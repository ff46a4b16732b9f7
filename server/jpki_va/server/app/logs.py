"""One log format per process, chosen by `--log-format`: text for a terminal, JSON lines
otherwise, both with the time zone. Used by every role, the responder's worker
processes and the commands alike.

The choice travels in the environment (JPKI_VA_LOG_FORMAT), resolved once by the
process that was started: the workers it spawns inherit it, and so does the progress
of long operations (base/progress.py), which draws a bar only beside text logs.

Messages name serials, sequences and issuers, never holders: nothing here adds
personal data, and nothing in the request path logs per request (errors only).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TextIO

from jpki_va.server.base.progress import LOG_FORMAT_ENV

FORMATS = ("auto", "text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the time in UTC, its offset written out."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "role": self._role,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            event["error"] = record.exc_info[0].__name__
            event["trace"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-12-04T17:23:01.123+09:00 INFO signer[1234] jpki_va.…: message``, local time."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).astimezone()
        line = (
            f"{when.isoformat(timespec='milliseconds')} {record.levelname:<7} "
            f"{self._role}[{record.process}] {record.name}: {record.getMessage()}"
        )
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve(choice: str | None, stream: TextIO | None = None) -> str:
    """``text`` or ``json``: the choice, else the inherited one, else by the terminal."""
    choice = choice or os.environ.get(LOG_FORMAT_ENV) or "auto"
    if choice not in FORMATS:
        raise ValueError(f"log format {choice!r} is not one of {', '.join(FORMATS)}")
    if choice == "auto":
        return "text" if (stream or sys.stderr).isatty() else "json"
    return choice


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes, as logging's last resort does."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def configure(role: str, choice: str | None = None, level: int = logging.INFO) -> str:
    """One handler on stderr in the chosen format (replacing one set here before);
    returns the format, which this process's children inherit.

    Handlers someone else installed (a test harness, a program embedding a role) stay
    in charge, as logging.basicConfig leaves them.
    """
    chosen = resolve(choice)
    os.environ[LOG_FORMAT_ENV] = chosen
    root = logging.getLogger()
    for ours in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(ours)
    if root.handlers:
        return chosen
    handler = _Stderr()
    handler.setFormatter(JsonFormatter(role) if chosen == "json" else TextFormatter(role))
    root.addHandler(handler)
    root.setLevel(level)
    return chosen
