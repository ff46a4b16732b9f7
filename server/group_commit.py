"""Group commit of the provision ledger: concurrent answers counted in one commit.

Every answer that provides status information is counted durably before it leaves
(第41条). One LMDB write transaction per answer makes the commit, not the answer,
the cost of a call; so callers hand their entry to one committer thread and wait.
The committer takes whatever has queued up meanwhile, writes it in one transaction
(`Ledger.record_all`) and wakes that group: each answer still leaves only after the
commit that counts it, and a failed commit fails every call of its group, with
nothing of the group recorded (LMDB aborts the whole transaction).

The queue is bounded: when the ledger cannot keep up, callers are refused at once
(`LedgerBacklog`) rather than piling up in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime

from server.domain import Provision
from server.ledger import Disclosure, Entry, Ledger, LedgerError

DEFAULT_MAX_PENDING = 4096  # entries waiting for a commit, per process


class LedgerBacklog(LedgerError):
    """Too many answers are waiting for the ledger: this one is refused, not queued."""


class LedgerClosed(LedgerError):
    """The committer has stopped: nothing more is recorded, so nothing is answered."""


class _Group:
    """Entries committed together, and the one event their callers wait on."""

    __slots__ = ("done", "entries", "error")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.done = threading.Event()
        self.error: LedgerError | None = None


class GroupCommit:
    """`Ledger.record` for many threads: same call, one commit per group. Start after fork."""

    def __init__(self, ledger: Ledger, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._ledger = ledger
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._group = _Group()  # the group being filled
        self._closed = False
        self.commits = 0  # transactions written (for metrics and tests)
        self.recorded = 0  # entries they carried
        self._thread = threading.Thread(target=self._run, name="ledger-commit", daemon=True)
        self._thread.start()

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
            if len(group.entries) == 1:
                self._wake.notify()
        group.done.wait()
        if group.error is not None:
            raise group.error

    @property
    def pending(self) -> int:
        """Entries queued for the next commit."""
        with self._lock:
            return len(self._group.entries)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._group.entries and not self._closed:
                    self._wake.wait()
                group = self._group
                if not group.entries:  # closed and drained
                    return
                self._group = _Group()
            try:
                self._ledger.record_all(group.entries)
            except LedgerError as exc:
                group.error = exc
            except Exception as exc:  # never lose the thread: the callers would wait forever
                group.error = LedgerError(f"cannot record the provision: {exc!r}")
            else:
                self.commits += 1
                self.recorded += len(group.entries)
            group.done.set()

    def close(self) -> None:
        """Commit what is queued, then refuse further entries (LedgerClosed)."""
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._thread.join()
