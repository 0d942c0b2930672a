"""A port free on every loopback address the test DNS zone names: the tests' MAILROOM_MX_PORT.

Real MX hosts all listen on port 25; tests give every MX host's sink or raw server this one
port on its own 127.0.0.x address (and ::1), as `Settings(mx_port=...)` requires.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack

import pytest

MX_ADDRESSES = (
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
    "127.0.0.6",
    "127.0.0.7",
    "127.0.0.8",
    "127.0.0.9",
    "::1",
)


def free_mx_port() -> int:
    """A port that every address of `MX_ADDRESSES` can bind right now."""
    for _ in range(50):
        with ExitStack() as stack:
            probe = stack.enter_context(socket.socket())
            probe.bind((MX_ADDRESSES[0], 0))
            port = int(probe.getsockname()[1])
            try:
                for address in MX_ADDRESSES[1:]:
                    family = socket.AF_INET6 if ":" in address else socket.AF_INET
                    stack.enter_context(socket.socket(family)).bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port is free on every MX address")


@pytest.fixture
def mx_port() -> int:
    """A fresh MX port for this test."""
    return free_mx_port()
