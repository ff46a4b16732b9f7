"""A full snapshot's links file, written by a second process while the first goes on.

The links pass reads the registry record of every holder's certificates (a random
read each) and runs the correspondence rule holder by holder: the longest part of a
full publish at national scale, and one the records, events and CRLs do not wait
for. A second process on the other core runs the same pass (`FullContent.link_rows`,
the one implementation) on the same registry, so the publish takes about the longer
of the two halves instead of their sum.

Both halves must describe one moment. LMDB gives a reader the last commit before
its transaction began, and the transaction's id names that commit: the second
process proceeds only when its id is the caller's. If a write committed in between,
or the process fails in any way, `result()` says None and the caller runs the pass
itself, so the snapshot never depends on the second process.
"""

from __future__ import annotations

import logging
import multiprocessing
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

from jpki_va.server.base.private_files import open_private
from jpki_va.server.law.retention import RetentionPolicy
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.signer.full_snapshot import FullContent
from jpki_va.server.snapshot.data_files import write_link_rows

log = logging.getLogger(__name__)

# A spawned process (not a fork): the caller holds an LMDB environment, HSM sessions
# and threads, none of which survive a fork safely.
_CONTEXT = multiprocessing.get_context("spawn")


def _run(
    registry_dir: Path,
    transaction_id: int,
    retention: RetentionPolicy,
    now: datetime,
    out: Path,
    scratch: Path,
    conn: Connection,
) -> None:
    """The second process: the links file, or None when it sees another commit."""
    try:
        with Registry.reader(registry_dir) as tx:
            if tx.transaction_id != transaction_id:
                conn.send(None)
                return
            content = FullContent(tx, [], retention, now, scratch=scratch)
            with open_private(out) as f:
                conn.send(write_link_rows(f, content.link_rows()))
    except BaseException as exc:  # any failure at all: the caller runs the pass itself
        conn.send(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


class LinkProcess:
    """The links pass of one full publish, running in a second process."""

    def __init__(
        self,
        registry_dir: Path,
        transaction_id: int,
        retention: RetentionPolicy,
        now: datetime,
        out: Path,
        scratch: Path,
    ) -> None:
        self._out = out
        receive, send = _CONTEXT.Pipe(duplex=False)
        self._receive = receive
        self._process = _CONTEXT.Process(
            target=_run,
            args=(registry_dir, transaction_id, retention, now, out, scratch, send),
            name="jpki-va-links",
            daemon=True,  # never outlives the signer
        )
        self._process.start()
        send.close()  # the child holds the only sending end: its death ends recv()

    def result(self) -> int | None:
        """How many link rows it wrote to `out`; None if the caller must write them."""
        try:
            answer = self._receive.recv()
        except EOFError:
            answer = f"the process ended with code {self._process.exitcode}"
        finally:
            self._receive.close()
            self._process.join()
        if isinstance(answer, int):
            return answer
        if answer is not None:
            log.warning("links pass in a second process failed (%s); running it here", answer)
        self._out.unlink(missing_ok=True)
        return None

    def cancel(self) -> None:
        """Stop the process (the publish was abandoned); its file goes with the builder."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._receive.close()
