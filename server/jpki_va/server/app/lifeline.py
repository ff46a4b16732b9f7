"""A spawned worker's tie to its supervisor: when the supervisor dies, the worker stops.

Without it, workers whose supervisor was killed kept serving an index nobody kept
fresh, and held the port and their ledger shards against a restart. Two ties:

* Linux's parent-death signal (prctl PR_SET_PDEATHSIG, through ctypes): the kernel
  sends the worker SIGTERM, its ordinary stop, when the supervisor dies. It is set in
  the worker as soon as it runs, so a supervisor that died before then is caught by
  checking, afterwards, that the parent is still the process that spawned it. The
  kernel fires it when the *thread* that spawned the worker ends, not only the process.
* The liveness pipe multiprocessing gives each spawned child
  (`parent_process().sentinel`): only the supervisor holds its write end, so the kernel
  closes it when the supervisor dies and the worker's end turns readable. Portable,
  and it follows the process, not a thread; a thread here waits on it.

Either way the worker runs its orderly stop (health NOT_SERVING, drain, close). With
no supervisor left to kill a worker hanging in it, the worker ends itself after a
deadline.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_ORPHANED = 70  # the orderly stop outlived its deadline


class ParentGone(RuntimeError):
    """The supervisor died before this worker could tie itself to it."""


def set_parent_death_signal(signum: int) -> bool:
    """Have the kernel send `signum` to this process when its parent dies.

    False where there is no such call (not Linux): the liveness pipe covers it there.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    return True


def tie_to_parent(stop: Callable[[], None], *, deadline: float) -> None:
    """Call `stop` when the process that spawned this one dies; exit `deadline` s later.

    The caller handles SIGTERM as a stop before calling this. Raises ParentGone when
    the parent is already gone. Does nothing in a process multiprocessing did not
    spawn: it has no supervisor to follow.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    set_parent_death_signal(signal.SIGTERM)
    # Reparented (to init or a subreaper) if the parent died before the prctl.
    if os.getppid() != parent.pid or not parent.is_alive():
        raise ParentGone(f"supervisor {parent.pid} exited before this worker started")
    threading.Thread(
        target=_watch,
        args=(parent.sentinel, parent.pid, stop, deadline),
        name="lifeline",
        daemon=True,
    ).start()


def _watch(sentinel: int, pid: int, stop: Callable[[], None], deadline: float) -> None:
    wait([sentinel])  # readable only once the supervisor's end is closed: it is gone
    log.warning("supervisor %d is gone; this worker stops", pid)
    stop()
    time.sleep(deadline)
    log.error("the stop took longer than %.0f s with no supervisor; exiting", deadline)
    os._exit(EXIT_ORPHANED)
