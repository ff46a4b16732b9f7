"""第12条, 第31条: resident events that end card certificates (RESIDENT_CHANGE).

第12条 (CARD_SIGN): an amendment of name, address, birth date or sex in the
resident record (住民基本台帳法第7条第1号〜第3号・第7号), except a minor correction
defined by ministry ordinance, or ANY deletion of the resident record (including
deletion because of a move-out).

第31条 (CARD_AUTH): deletion of the resident record NOT based on a move-out notice
(転出届), or 30 days passing after the planned move-out date in the move-out notice
with no move-in notice (住民基本台帳法第22条第1項). A change of name, address,
birth date or sex does not end an auth certificate.

Mobile certificates never lose effect by a resident event directly: they follow
their card certificate through the cascade (mobile_cascade.py).

The 30 days: the day after the planned date is day 1 (民法第140条, the first day
is not counted); the period has passed when day 30 has ended, that is at 00:00
Japan time at the start of day 31. Dates in resident records are Japanese dates.

When the loss happens: 第34条第1項第2号 ends the certificate when J-LIS *records*
the 第31条 information, and 第31条 has it recorded 直ちに once J-LIS knows of the
event, dated the day it is recorded. So the loss is dated when it is recorded, never
back-dated to the deadline: an answer "as of T" given at T stays true. The signer
sweeps at every 00:00 Japan time (`next_sweep`), the instant deadlines fall on, so
the recording follows the deadline within the sweep's own delay. A move-in recorded
after the deadline comes too late to prevent the event (the 30 days passed without
it): the loss is recorded first, then the notice is closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from jpki_va.core.clock import JST
from jpki_va.core.domain import CertKind, SluggedEnum
from jpki_va.server.law.errors import Refused

MOVE_OUT_GRACE_DAYS = 30


class ResidentEvent(SluggedEnum):
    """What happened to a resident record; wire values of the signer API."""

    NAME_CHANGE = 1
    ADDRESS_CHANGE = 2
    BIRTH_DATE_CHANGE = 3
    SEX_CHANGE = 4
    RECORD_DELETED = 5
    MOVE_OUT = 6
    MOVE_IN = 7

    @property
    def is_amendment(self) -> bool:
        return self in _AMENDMENTS


_AMENDMENTS = frozenset(
    {
        ResidentEvent.NAME_CHANGE,
        ResidentEvent.ADDRESS_CHANGE,
        ResidentEvent.BIRTH_DATE_CHANGE,
        ResidentEvent.SEX_CHANGE,
    }
)


@dataclass(frozen=True)
class ResidentEventFacts:
    event: ResidentEvent
    minor: bool = False  # a minor correction (総務省令で定める軽微な修正)
    planned_date: date | None = None  # MOVE_OUT: the planned move-out date
    deletion_by_move_out: bool = False  # RECORD_DELETED: based on a move-out notice

    def validate(self) -> None:
        if self.minor and not self.event.is_amendment:
            raise Refused("--minor applies only to a change of name, address, birth date or sex")
        if self.deletion_by_move_out and self.event is not ResidentEvent.RECORD_DELETED:
            raise Refused("deletion-by-move-out applies only to record-deleted")
        if self.event is ResidentEvent.MOVE_OUT and self.planned_date is None:
            raise Refused("move-out needs the planned move-out date of the notice")
        if self.event is not ResidentEvent.MOVE_OUT and self.planned_date is not None:
            raise Refused("a planned date applies only to move-out")


def kinds_ended(facts: ResidentEventFacts) -> frozenset[CertKind]:
    """The card kinds whose certificates lose effect by this event."""
    facts.validate()
    ended: set[CertKind] = set()
    if facts.event.is_amendment and not facts.minor:
        ended.add(CertKind.CARD_SIGN)  # 第12条第1号
    if facts.event is ResidentEvent.RECORD_DELETED:
        ended.add(CertKind.CARD_SIGN)  # 第12条第2号: any deletion
        if not facts.deletion_by_move_out:
            ended.add(CertKind.CARD_AUTH)  # 第31条第1号
    return frozenset(ended)


def move_out_deadline(planned_date: date) -> datetime:
    """When 30 days have passed after the planned move-out date (第31条第2号)."""
    last_day = planned_date + timedelta(days=MOVE_OUT_GRACE_DAYS)
    return datetime.combine(last_day + timedelta(days=1), time(0), tzinfo=JST)


def move_out_lapsed(planned_date: date, now: datetime) -> bool:
    return now >= move_out_deadline(planned_date)


def next_sweep(after: datetime) -> datetime:
    """The first 00:00 Japan time strictly after `after`: when the next sweep is due."""
    day = after.astimezone(JST).date() + timedelta(days=1)
    return datetime.combine(day, time(0), tzinfo=JST)
