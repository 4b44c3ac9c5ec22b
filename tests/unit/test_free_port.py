"""Ports for the processes a run or a test starts: free, distinct, and out of the kernel's range for
outgoing connections (where a client connecting meanwhile could take one first)."""

from __future__ import annotations

import socket

import pytest

from ops.embedded import FREE_PORTS_FROM, _outgoing_ports_from, free_port

pytestmark = pytest.mark.unit


def test_free_ports_are_distinct_bindable_and_below_the_outgoing_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    below = min(_outgoing_ports_from(), 32_768)
    if below - FREE_PORTS_FROM >= 1_000:  # else an unusual range: the kernel's pick is used
        assert all(FREE_PORTS_FROM <= port < below for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))
