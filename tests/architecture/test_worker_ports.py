"""The suite runs on one pytest worker per core: no two workers' servers may be handed
the same loopback port (tests/support/ports.py)."""

from __future__ import annotations

import socket

import pytest

from tests.support.ports import BASE, PortSlice, free_port, free_port_pair


def test_workers_slices_are_disjoint_and_below_the_kernels_ports() -> None:
    span = (32768 - BASE) // 4
    for index in range(4):
        piece = PortSlice(index, 4, 32768)
        ports = {piece.take() for _ in range(200)}
        assert len(ports) == 200  # handed out in turn, none twice
        # Worker `index`'s own band: the bands of the four do not meet.
        assert all(BASE + index * span <= port < BASE + (index + 1) * span for port in ports)


def test_a_port_in_use_is_passed_over() -> None:
    piece = PortSlice(0, 1, 32768)
    port = piece.take()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port + 1))
        held.listen()
        piece._next = port + 1  # the next in turn is the held one
        assert piece.take() == port + 2


def test_a_pair_is_two_free_consecutive_ports() -> None:
    port = free_port_pair()
    for candidate in (port, port + 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", candidate))
    assert free_port() not in (port, port + 1)


def test_too_many_workers_for_the_range_are_refused() -> None:
    with pytest.raises(RuntimeError, match="fewer than 100 ports"):
        PortSlice(0, 300, 32768)
