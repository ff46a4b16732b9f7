"""A worker's file descriptors: its limit raised as far as allowed, connections capped below.

Every connection is a descriptor. A worker that has none left can neither accept a
client nor open a file of its own (its metrics, an index): idle connections past the
limit stopped it serving, and killed it. So a worker raises its soft RLIMIT_NOFILE to
the hard limit at start (any process may), keeps `RESERVED` descriptors for itself,
and caps its gRPC and HTTP connections within the rest.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from jpki_va.server.app.config import ConfigError, ResponderConfig

log = logging.getLogger(__name__)

# What a worker opens besides client connections: LMDB environments, metrics files,
# listening sockets, pipes, the event loops' own descriptors; with room to spare.
RESERVED = 256


def attainable_limit() -> int:
    """The descriptor limit this process (and a worker it starts) can raise itself to."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if hard == resource.RLIM_INFINITY else max(soft, hard)


def raise_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = attainable_limit()
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


@dataclass(frozen=True)
class ConnectionCaps:
    """Connections one worker keeps open at most, per protocol."""

    grpc: int
    http: int  # 0: HTTP is off


def connection_caps(config: ResponderConfig, limit: int) -> ConnectionCaps:
    """The caps of a worker whose descriptor limit is `limit`.

    What the configuration names must fit below the limit (ConfigError otherwise);
    a cap it leaves out gets an even share of the rest.
    """
    room = limit - RESERVED
    http_on = config.http_listen is not None
    caps: list[int | None] = [config.grpc_max_connections]
    if http_on:
        caps.append(config.http_max_connections)
    given = sum(c for c in caps if c is not None)
    missing = caps.count(None)
    if given + missing > room:
        raise ConfigError(
            f"the open files limit {limit} leaves {max(room, 0)} connections a worker may "
            f"keep ({RESERVED} are for its own files), fewer than the "
            f"{given + missing} configured; raise the limit (ulimit -n) or lower "
            "--grpc-max-connections / --http-max-connections"
        )
    share = (room - given) // missing if missing else 0
    grpc, *http = [share if c is None else c for c in caps]
    return ConnectionCaps(grpc, http[0] if http else 0)
