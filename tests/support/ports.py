"""Loopback ports for the servers a test starts, one slice of ports per pytest worker.

A test asks for a free port and then starts a server on it. Asking the kernel
(`bind(0)`) gives any free port, so two workers side by side (pytest-xdist) could be
handed the same one between one's asking and its server's bind. Our gRPC servers
bind with SO_REUSEPORT, so the second server would share the port silently and each
test's client would reach either server. Here each worker takes ports in turn from a
slice of its own, below the kernel's ephemeral range: no other worker, and no port
the kernel hands out for a connection, falls in it.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

#: The lowest port handed out; well clear of the registered services below it.
BASE = 10000
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


class PortSlice:
    """Worker `index` of `count`'s share of [BASE, `top`), handed out in turn from a
    random start (so a rerun does not meet the previous run's lingering sockets)."""

    def __init__(self, index: int, count: int, top: int) -> None:
        span = (top - BASE) // count
        if span < 100:
            raise RuntimeError(f"{count} workers leave each fewer than 100 ports under {top}")
        self.start, self.stop = BASE + index * span, BASE + (index + 1) * span
        self._next = self.start + random.randrange(span)

    def take(self, run: int = 1) -> int:
        """The first of `run` consecutive ports, each free now and not handed out
        since this slice last wrapped around."""
        for _ in range(self.stop - self.start):
            port = self._next
            if port + run > self.stop:
                self._next = self.start
                continue
            self._next = port + run
            if all(_bindable(port + k) for k in range(run)):
                return port
        raise RuntimeError(f"no {run} free consecutive ports in {self.start}-{self.stop - 1}")


def _this_worker() -> PortSlice:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3": worker 3
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return PortSlice(int(worker.removeprefix("gw")), count, _ephemeral_low())


_PORTS = _this_worker()


def free_port() -> int:
    """A loopback TCP port free at the time of asking, this worker's own."""
    return _PORTS.take()


def free_port_pair() -> int:
    """A loopback port P with P+1 also free (the demo's responder and signer)."""
    return _PORTS.take(2)
