"""Fault points: named steps at which the fault-injection suite has a role killed.

A role reads ``JPKI_VA_FAULT_POINTS`` once, at import: a comma-separated list of
point names, each optionally ``@N`` (the Nth time the step is reached; default the
first). When an armed step is reached the process sends itself SIGKILL, the crash
that leaves the most behind: no ``finally``, no ``atexit``, no flush. Unset, as in
production, :func:`fault_point` is one test of an empty dict.

Every point is named in :data:`POINTS`, so a misspelt point stops the role at start
instead of silently never firing, and the suite can walk every step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV = "JPKI_VA_FAULT_POINTS"

#: Each step, in the order a publish or an ingest passes them.
POINTS = (
    # signer: a snapshot publish
    "publish.begun",  # the snapshot key is loaded and the next sequence read; no file yet
    "publish.files-written",  # data files and CRLs are in the temporary directory
    "snapshot.manifest-written",  # the signed manifest is written, the rename is not
    "publish.committed",  # renamed into place; the registry has not recorded it yet
    "publish.state-saved",  # the registry has its numbers and state; nothing pruned yet
    # responder: ingesting a full snapshot
    "index.build.written",  # the new index is complete under its temporary name
    "index.build.renamed",  # the new index has its real name, `current` is the old one
    "index.published",  # `current` points at the new index
    # responder: ingesting a delta
    "index.delta.applied",  # the delta's transaction is committed
    # responder: pre-producing OCSP responses
    "ocsp.produce.signed",  # a batch is signed, its transaction not committed
    "ocsp.produce.written",  # a batch and the pass's progress are committed
)


class FaultConfigError(ValueError):
    """JPKI_VA_FAULT_POINTS names a point that does not exist or a bad count."""


def _parse(text: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition("@")
        if name not in POINTS:
            raise FaultConfigError(f"{ENV}: unknown fault point {name!r}")
        if count and (not count.isdigit() or int(count) < 1):
            raise FaultConfigError(f"{ENV}: {item!r}: the count must be a whole number >= 1")
        armed[name] = int(count or 1)
    return armed


_armed = _parse(os.environ.get(ENV, ""))
_hits: dict[str, int] = {}
_lock = threading.Lock()


def fault_point(name: str) -> None:
    """Kill this process here if the suite armed ``name`` (and this is the Nth visit)."""
    if not _armed:
        return
    wanted = _armed.get(name)
    if wanted is None:
        return
    with _lock:
        _hits[name] = seen = _hits.get(name, 0) + 1
    if seen == wanted:
        sys.stderr.write(f"fault point {name}: SIGKILL to process {os.getpid()}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
