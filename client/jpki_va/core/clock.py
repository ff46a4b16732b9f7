"""Time is passed in, never read from a global, so tests can move it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Protocol

#: Japan time: the law's days, deadlines and fiscal years are counted in it.
JST = timezone(timedelta(hours=9), "JST")


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    #: `datetime.now(UTC)` itself as the method: read on every answer, and a C call,
    #: where a method around it was a Python frame (each about a microsecond served).
    now = staticmethod(partial(datetime.now, UTC))


class FixedClock:
    """A clock for tests: stays where it is put."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, when: datetime) -> None:
        self._now = when
