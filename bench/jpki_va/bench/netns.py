"""Hosts of their own on one machine: a network namespace per replica, a veth to each.

`HostNetwork.create(count)` makes `count` named namespaces (`ip netns add`), names
unique to this run, each joined to the root namespace by a veth pair on a /30 of one
private /24 chosen per run (one no route of this machine uses): the root end
`10.A.B.4n+1`, the namespace end `10.A.B.4n+2`. A process started through
`exec_prefix(n)` sees only its own loopback and its veth, so it is reached from the
root namespace (the balancer) at its host address, as another host would be.

`loopback_relay(n, port)` gives namespace n's loopback a port that leads to the root
namespace's loopback port (the signer's, plaintext, so never on the veth): a socket
opened inside the namespace (setns on one thread, then back), relayed by threads.

`close()` deletes what this run made, and only that, on every exit path (the fleet
calls it in its own close, and an atexit hook catches the rest); namespaces made by
others are never looked at. When the kernel (or the lack of root) refuses, `create`
raises `NamespacesRefused` and the caller falls back to loopback.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NamespacesRefused(RuntimeError):
    """This machine will not give us network namespaces (no `ip`, no root, a kernel
    without them, or a sandbox that forbids them)."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NamespacesRefused(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _used_prefixes() -> set[str]:
    """The 10.A.B prefixes this machine's routes or addresses touch (any namespace
    we can see from here: the root's)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip
    out += subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    used: set[str] = set()
    for word in out.split():
        if word.startswith("10."):
            used.add(".".join(word.split("/")[0].split(".")[:3]))
    return used


@dataclass(frozen=True)
class NamespaceHost:
    namespace: str
    veth: str  # the root namespace's end
    address: str  # the namespace end's address: the host's
    gateway: str  # the root end's address


@dataclass
class HostNetwork:
    run: str
    subnet: ipaddress.IPv4Network
    hosts: list[NamespaceHost] = field(default_factory=list)
    _relays: list[_Relay] = field(default_factory=list)
    _closed: bool = False

    @classmethod
    def create(cls, count: int) -> HostNetwork:
        if not 1 <= count <= 60:
            raise ValueError("1..60 namespaces (a /30 each in one /24)")
        if shutil.which("ip") is None:
            raise NamespacesRefused("the ip command (iproute2) is not installed")
        if os.geteuid() != 0:
            raise NamespacesRefused("network namespaces need root")
        rng = random.SystemRandom()
        run = f"{os.getpid() % 0x10000:04x}{rng.randrange(0x100):02x}"
        used = _used_prefixes()
        free = [f"10.{a}.{b}" for a in range(200, 255) for b in range(256)]
        prefix = rng.choice([p for p in free if p not in used])
        network = cls(run, ipaddress.IPv4Network(f"{prefix}.0/24"))
        atexit.register(network.close)
        try:
            for n in range(count):
                network._add(n)
        except BaseException:
            network.close()
            raise
        return network

    def _add(self, n: int) -> None:
        base = int(self.subnet.network_address) + 4 * n
        host = NamespaceHost(
            namespace=f"jpki-va-{self.run}-{n}",
            veth=f"jv{self.run}h{n}",  # IFNAMSIZ: at most 15 characters
            address=str(ipaddress.IPv4Address(base + 2)),
            gateway=str(ipaddress.IPv4Address(base + 1)),
        )
        peer = f"jv{self.run}n{n}"
        _ip("netns", "add", host.namespace)
        self.hosts.append(host)  # from here on close() deletes it
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer, "netns", host.namespace)
        _ip("addr", "add", f"{host.gateway}/30", "dev", host.veth)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/30", "dev", peer)
        _ip("-n", host.namespace, "link", "set", peer, "up")

    def exec_prefix(self, n: int) -> list[str]:
        """The argv prefix that runs a command inside namespace n."""
        return ["ip", "netns", "exec", self.hosts[n].namespace]

    def loopback_relay(self, n: int, port: int) -> None:
        """127.0.0.1:`port` inside namespace n leads to 127.0.0.1:`port` here."""
        self._relays.append(_Relay(_listen_in(self.hosts[n].namespace, port), port))

    def describe(self) -> str:
        return f"{len(self.hosts)} network namespaces jpki-va-{self.run}-*, veths on {self.subnet}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for relay in self._relays:
            relay.close()
        for host in self.hosts:
            # Deleting the namespace deletes its veth end, and so the pair.
            with contextlib.suppress(NamespacesRefused):
                _ip("netns", "delete", host.namespace)
            with contextlib.suppress(NamespacesRefused):
                if Path(f"/sys/class/net/{host.veth}").exists():
                    _ip("link", "delete", host.veth)
        atexit.unregister(self.close)


def _listen_in(namespace: str, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:`port` of `namespace` (it stays there)."""
    with (
        open(f"/run/netns/{namespace}") as target,  # noqa: PTH123 (a descriptor for setns)
        open("/proc/thread-self/ns/net") as home,  # noqa: PTH123
    ):
        if _libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NamespacesRefused(f"setns into {namespace}: {os.strerror(errno)}")
        try:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(16)
        finally:
            if _libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                # This thread would stay in the namespace: nothing may go on from here.
                os.abort()
    return listener


class _Relay:
    """Accepts on a namespace's loopback, connects to ours, copies both ways."""

    def __init__(self, listener: socket.socket, port: int) -> None:
        self._listener = listener
        self._port = port
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                outside = socket.create_connection(("127.0.0.1", self._port), timeout=5)
                outside.settimeout(None)
            except OSError:
                inside.close()
                continue
            with self._lock:
                self._open.update((inside, outside))
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.close()
            self._open.clear()
