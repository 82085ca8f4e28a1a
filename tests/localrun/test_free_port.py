"""free_port / free_port_block: ports a child process can bind, that no outgoing connection can take
first (below the kernel's ephemeral range), never handed out twice by one process."""

from __future__ import annotations

import random
import socket

import pytest

from localrun import free_port, free_port_block
from localrun.process import ephemeral_low


def test_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    random.seed(0)  # a test seeding the global generator must not steer the picker
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(10_000 <= port < ephemeral_low() for port in ports)
    for port in ports[:20]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_picked() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        assert taken not in {free_port() for _ in range(300)}


def test_a_block_binds_on_every_host() -> None:
    hosts = ("127.0.0.1", "127.0.0.2")
    base = free_port_block(4, hosts)
    for port in range(base, base + 4):
        for host in hosts:
            with socket.socket() as probe:
                probe.bind((host, port))
    later = free_port_block(4, hosts)
    assert later + 4 <= base or later >= base + 4  # blocks handed out do not overlap


def test_no_free_block_is_a_clear_error() -> None:
    with pytest.raises(OSError, match="no block of 100000 free ports"):
        free_port_block(100_000, attempts=3)
