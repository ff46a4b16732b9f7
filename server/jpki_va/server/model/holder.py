"""A holder's registered basic information (基本4情報), as certificates carry it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Holder:
    """The holder's registered basic information (基本4情報)."""

    name: str
    address: str
    birth_date: str
    sex: str
