"""Group commit of the provision ledger: concurrent answers counted in one commit.

Every answer that provides status information is counted durably before it leaves
(第41条). One LMDB write transaction per answer makes the commit, not the answer,
the cost of a call; so the entries of calls that arrive while a commit is under way
are gathered and written together by the next one (`Ledger.record_all`). Each
answer still leaves only after the commit that counts it, and a failed commit fails
every call of its group, with nothing of the group recorded (LMDB aborts the whole
transaction).

There is no committer thread: the first caller of a group leads it. It waits for
the commit under way to end (callers arriving meanwhile join its group), seals the
group and commits it in its own thread. A lone call therefore commits at once, as
before, and never waits for another thread to be scheduled: under the GIL that
hand-off can cost milliseconds when the process is busy.

A group is bounded: when the ledger cannot keep up, callers are refused at once
(`LedgerBacklog`) rather than piling up in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime

from jpki_va.core.domain import Provision
from jpki_va.server.ledger.provisions import Disclosure, Entry, Ledger, LedgerError

DEFAULT_MAX_PENDING = 4096  # entries gathered for the next commit, per process


class LedgerBacklog(LedgerError):
    """Too many answers are waiting for the ledger: this one is refused, not queued."""


class LedgerClosed(LedgerError):
    """The committer has stopped: nothing more is recorded, so nothing is answered."""


class _Group:
    """Entries committed together, and the lock the leader's followers wait on."""

    __slots__ = ("done", "entries", "error")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        # Held until the group's commit ends; followers wait by acquiring it. A bare
        # lock: an Event (a Condition and two locks) per group showed in profiles.
        self.done = threading.Lock()
        self.done.acquire()
        self.error: LedgerError | None = None


class GroupCommit:
    """`Ledger.record` for many threads: same call, one commit per group. Make after fork."""

    def __init__(self, ledger: Ledger, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._ledger = ledger
        self._max_pending = max_pending
        self._lock = threading.Lock()  # guards the group being filled and `_closed`
        self._writing = threading.Lock()  # held by the leader whose group is committing
        self._group = _Group()  # the group being filled
        self._closed = False
        self.commits = 0  # transactions written (for metrics and tests)
        self.recorded = 0  # entries they carried

    def record(
        self,
        verifier_id: str,
        counts: Mapping[Provision, int],
        when: datetime,
        disclosures: Sequence[Disclosure] = (),
    ) -> None:
        """Returns once the entry is committed; raises LedgerError if it is not."""
        entry = Entry(verifier_id, counts, when, disclosures)
        with self._lock:
            if self._closed:
                raise LedgerClosed("the provision ledger is closed; the answer is withheld")
            group = self._group
            if len(group.entries) >= self._max_pending:
                raise LedgerBacklog(
                    f"{len(group.entries)} answers are waiting for the provision ledger;"
                    " try again shortly"
                )
            group.entries.append(entry)
            leads = len(group.entries) == 1
        if leads:
            with self._writing:  # the previous group's commit ends; ours gathers meanwhile
                with self._lock:
                    self._group = _Group()  # sealed: later callers start the next group
                self._commit(group)
        else:
            with group.done:  # returns when the leader has released it
                pass
        if group.error is not None:
            raise group.error

    def _commit(self, group: _Group) -> None:
        try:
            self._ledger.record_all(group.entries)
        except LedgerError as exc:
            group.error = exc
        except Exception as exc:  # every caller of the group must hear of it
            group.error = LedgerError(f"cannot record the provision: {exc!r}")
        else:
            self.commits += 1
            self.recorded += len(group.entries)
        group.done.release()

    @property
    def pending(self) -> int:
        """Entries gathered for the next commit."""
        with self._lock:
            return len(self._group.entries)

    def close(self) -> None:
        """Refuse further entries (LedgerClosed); returns when the commit under way ends.

        A group gathered before the close is still committed by its leader.
        """
        with self._lock:
            self._closed = True
        with self._writing:
            pass
