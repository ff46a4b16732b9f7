"""Whether this replica belongs in a balancer's rotation: fresh, or not.

A replica with an index still answers, but one that falls behind the newest committed
snapshot in the store for longer than `max_lag`, or that refused the newest one, gives
stale answers; its health says NOT_SERVING so the balancer sends its calls elsewhere,
and SERVING again once it has caught up. No index at all is out of rotation too.

"Behind" is counted from the moment this replica first saw a newer snapshot than its
index reflects, so a replica building a large full snapshot stays in rotation (its
index is as current as the snapshot's data) unless the build outlasts `max_lag`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RotationState:
    """In rotation or not, and why not (for the log)."""

    in_rotation: bool
    reason: str | None = None


class Rotation:
    """Follows the live sequence against the newest in the store; decides the health."""

    def __init__(self, max_lag: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if max_lag <= 0:
            raise ValueError("the staleness bound must be > 0 seconds")
        self._max_lag = max_lag
        self._monotonic = monotonic
        self._behind_since: float | None = None

    def judge(self, live: int | None, newest: int, newest_refused: bool) -> RotationState:
        """`live`: the sequence the index reflects (None: no index); `newest`: the
        highest committed sequence in the store (0: none seen); `newest_refused`: the
        newest was refused (verification, or a delta that cannot follow)."""
        if live is None:
            self._behind_since = None
            return RotationState(False, "no index yet")
        if newest <= live:
            self._behind_since = None
            return RotationState(True)
        now = self._monotonic()
        if self._behind_since is None:
            self._behind_since = now
        if newest_refused:
            return RotationState(False, f"refused the newest snapshot ({newest}); at {live}")
        behind = now - self._behind_since
        if behind > self._max_lag:
            return RotationState(
                False, f"at {live}, behind the newest snapshot {newest} for {behind:.1f}s"
            )
        return RotationState(True)
