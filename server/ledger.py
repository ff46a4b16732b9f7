"""The provision ledger: counts for the annual report (第41条) and the audit trail.

One LMDB environment per process group (the responder's workers share one, the
signer has its own). Every provision is written in a committed write transaction
before its answer leaves, so a killed process loses nothing a client saw answered:
LMDB commits reach the kernel's page cache at once. Disclosures of personal data
are also forced to disk (fsync) before the answer leaves; counts are forced by
`sync()`, which the owner calls periodically, so a machine crash can lose at most
the counts of that last interval but never leaves a broken store. LMDB's lock file
makes the workers' writes to the same environment safe.

Counts are kept per day (in Japan time, the agency's), provision kind and verifier,
so a report covers any period; the audit trail is one entry per disclosure.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import lmdb

from server.domain import Provision

JST = timezone(timedelta(hours=9), "JST")
_MAP_SIZE = 1 << 36
_COUNT = 8  # bytes of a big-endian counter


class LedgerError(Exception):
    """The ledger cannot be opened, read or written: nothing of the write was recorded."""


@dataclass(frozen=True, slots=True)
class Entry:
    """What one answer provided to one verifier: written together with others."""

    verifier_id: str
    counts: Mapping[Provision, int]
    when: datetime
    disclosures: Sequence[Disclosure] = ()


@dataclass(frozen=True, slots=True)
class Disclosure:
    """One disclosure of personal data, as the audit trail keeps it (証跡)."""

    time: datetime
    verifier_id: str
    provision: Provision
    subject: str  # what was asked about, e.g. "CARD_SIGN:0A1B2C"
    detail: str = ""  # what was given, without the personal data itself

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "verifier": self.verifier_id,
            "provision": self.provision.name,
            "subject": self.subject,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Disclosure:
        return cls(
            time=datetime.fromisoformat(data["time"]),
            verifier_id=data["verifier"],
            provision=Provision[data["provision"]],
            subject=data["subject"],
            detail=data["detail"],
        )


class Recorder(Protocol):
    """Where provisions are recorded: a Ledger, or a GroupCommit in front of one."""

    def record(
        self,
        verifier_id: str,
        counts: Mapping[Provision, int],
        when: datetime,
        disclosures: Sequence[Disclosure] = (),
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Count:
    day: date
    provision: Provision
    verifier_id: str
    count: int


def _count_key(day: date, provision: Provision, verifier_id: str) -> bytes:
    return f"{day.isoformat()}|{provision.name}|{verifier_id}".encode()


def _parse_count_key(key: bytes) -> tuple[date, Provision, str]:
    day, provision, verifier_id = bytes(key).decode().split("|", 2)
    return date.fromisoformat(day), Provision[provision], verifier_id


def _audit_key(when: datetime, serial: int) -> bytes:
    # Time order first; pid and a per-process serial keep concurrent writers apart.
    nanos = int(when.timestamp() * 1_000_000) * 1000
    return nanos.to_bytes(8, "big") + os.getpid().to_bytes(4, "big") + serial.to_bytes(8, "big")


def local_day(when: datetime) -> date:
    return when.astimezone(JST).date()


class Ledger:
    """Provision counts and the audit trail in one LMDB environment. Open after fork."""

    _DBS = (b"counts", b"audit")

    def __init__(self, path: Path, *, readonly: bool = False, map_size: int = _MAP_SIZE) -> None:
        if readonly and not (path / "data.mdb").is_file():
            raise LedgerError(f"{path} holds no provision ledger")
        try:
            if not readonly:
                path.mkdir(parents=True, exist_ok=True)
            # sync off: a commit reaches the page cache (safe from a killed process);
            # disclosures and sync() force it to disk.
            self._env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=len(self._DBS),
                readonly=readonly,
                sync=False,
                metasync=False,
            )
            self._counts, self._audit = (
                self._env.open_db(name, create=not readonly) for name in self._DBS
            )
        except lmdb.Error as exc:
            raise LedgerError(f"cannot open the provision ledger {path}: {exc}") from None
        self.path = path
        self._serial = 0
        self._lock = threading.Lock()

    def record(
        self,
        verifier_id: str,
        counts: Mapping[Provision, int],
        when: datetime,
        disclosures: Sequence[Disclosure] = (),
    ) -> None:
        """Count provisions to one verifier (and audit disclosures) in one commit."""
        self.record_all([Entry(verifier_id, counts, when, disclosures)])

    def record_all(self, entries: Iterable[Entry]) -> None:
        """Every entry in one write transaction: all of them are recorded, or none.

        Raises LedgerError when the commit fails (a full map, a closed environment,
        an I/O error); LMDB then aborts the transaction, so nothing is half-written.
        """
        totals: Counter[bytes] = Counter()
        disclosures: list[Disclosure] = []
        for entry in entries:
            day = local_day(entry.when)
            for provision, n in entry.counts.items():
                if n > 0:
                    totals[_count_key(day, provision, entry.verifier_id)] += n
            disclosures.extend(entry.disclosures)
        if not totals and not disclosures:
            return
        with self._lock:
            first = self._serial + 1
            self._serial += len(disclosures)
        try:
            with self._env.begin(write=True) as txn:
                for key, n in totals.items():
                    raw = txn.get(key, db=self._counts)
                    total = (0 if raw is None else int.from_bytes(raw, "big")) + n
                    txn.put(key, total.to_bytes(_COUNT, "big"), db=self._counts)
                for serial, disclosure in enumerate(disclosures, first):
                    txn.put(
                        _audit_key(disclosure.time, serial),
                        json.dumps(disclosure.to_json(), ensure_ascii=False).encode(),
                        db=self._audit,
                    )
            if disclosures:
                self._env.sync(True)
        except lmdb.Error as exc:
            raise LedgerError(f"cannot record the provision in {self.path}: {exc}") from exc

    def sync(self) -> None:
        """Force every commit so far to disk."""
        self._env.sync(True)

    def counts(self, start: date, end: date) -> list[Count]:
        """Counts for the days start <= day < end, in key order."""
        out: list[Count] = []
        with self._env.begin(db=self._counts) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(start.isoformat().encode()):
                return out
            for key, value in cursor:
                day, provision, verifier_id = _parse_count_key(key)
                if day >= end:
                    break
                out.append(Count(day, provision, verifier_id, int.from_bytes(value, "big")))
        return out

    def disclosures(
        self, start: datetime, end: datetime, verifier_id: str | None = None
    ) -> list[Disclosure]:
        """Disclosures with start <= time < end, oldest first, optionally of one verifier."""
        first = _audit_key(start, 0)[:8]
        stop = _audit_key(end, 0)[:8]
        out: list[Disclosure] = []
        with self._env.begin(db=self._audit) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(first):
                return out
            for key, value in cursor:
                if bytes(key[:8]) >= stop:
                    break
                disclosure = Disclosure.from_json(json.loads(bytes(value)))
                if verifier_id is None or disclosure.verifier_id == verifier_id:
                    out.append(disclosure)
        return out

    def close(self) -> None:
        self._env.close()


def year_bounds(year: int) -> tuple[date, date]:
    if not 2000 <= year <= 9999:
        raise ValueError(f"year {year} is out of range")
    return date(year, 1, 1), date(year + 1, 1, 1)
