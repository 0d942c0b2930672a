"""A real Redis for tests: `redis-server` on a free 127.0.0.1 port, in a directory of its own.

`RedisServer(workdir, port=None, appendonly=False)` runs `redis-server` in the foreground with
no configuration file, listening on loopback only, with no RDB snapshots. With `appendonly`
it keeps an append-only file fsynced on every write, so a test can `kill()` it (SIGKILL) or
`stop()` it (SIGTERM) and `start()` it again on the same port and directory to check what
survives. A missing binary is a failure, never a skip: `scripts/` installs Debian's
`redis-server`.

Fixtures: `redis_server` (session-wide, no persistence), `redis_client` (a `redis.Redis` on it,
FLUSHALL before each test) and `make_redis_server(appendonly=...)` for a test's own server,
stopped after the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.support.lifecycle import StartStop

LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


class RedisMissingError(RuntimeError):
    """redis-server is not installed: run the project's setup script (it installs it)."""


def find_redis_server() -> str:
    """The redis-server executable; raises `RedisMissingError` when it is not installed."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin", "/sbin"])
    found = shutil.which("redis-server", path=search)
    if found is None:
        raise RedisMissingError(
            "redis-server not found (looked in PATH, /usr/bin, /usr/sbin, /sbin): "
            "install Debian's redis-server"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer(StartStop):
    """One redis-server process; `start()` returns once it answers PING."""

    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = False) -> None:
        self.workdir = workdir
        self.appendonly = appendonly
        self._fixed_port = port is not None
        self.port = 0 if port is None else port
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0`."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The running server's PID, or None when it is not running."""
        return None if self._process is None else self._process.pid

    def client(self) -> redis.Redis:
        """A new client of this server (bytes responses); the caller closes it."""
        return redis.Redis(host=LOOPBACK, port=self.port, db=0, socket_timeout=5.0)

    def _arguments(self, port: int) -> list[str]:
        arguments = [
            "--port", str(port),
            "--bind", LOOPBACK,
            "--dir", str(self.workdir),
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",  # stdout, captured in a file per start
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.appendonly:
            arguments += ["--appendfsync", "always"]
        return arguments

    def start(self) -> None:
        """Start the server and wait until it answers; restarts keep the port and directory.

        :raises RedisMissingError: redis-server is not installed.
        :raises RuntimeError: it did not start (its output is in the message).
        """
        if self._process is not None:
            raise RuntimeError(f"redis-server is already running (pid {self._process.pid})")
        executable = find_redis_server()
        self.workdir.mkdir(parents=True, exist_ok=True)
        failure = ""
        # A port found free may be taken before the server binds it; a new one is tried then,
        # unless the port is fixed (given, or kept from an earlier start for a restart).
        for _ in range(1 if self._fixed_port else 3):
            port = self.port if self._fixed_port else _free_port()
            self._starts += 1
            output_path = self.workdir / f"redis.out.{self._starts}"
            with output_path.open("wb") as output:
                process = subprocess.Popen(
                    [executable, *self._arguments(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(process, port):
                self._process, self.port, self._fixed_port = process, port, True
                return
            if process.poll() is None:
                process.kill()
            process.wait()
            failure = output_path.read_text(errors="replace").strip()
        raise RuntimeError(f"redis-server did not start: {failure or 'no answer'}")

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        probe = redis.Redis(
            host=LOOPBACK, port=port, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return False
                try:
                    # LOADING (replaying the AOF) is an error reply: wait until data is there.
                    if probe.ping():
                        return True
                except redis.RedisError:
                    pass
                time.sleep(0.02)
            return False
        finally:
            probe.close()

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the server with SIGTERM (a clean shutdown) and wait; safe to call twice."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server with SIGKILL (a crash) and wait; safe to call twice."""
        self._end(signal.SIGKILL)


@dataclass
class RedisServerFactory:
    """Starts servers in a test's directory; `make_redis_server` stops them afterwards."""

    workdir: Path
    started: list[RedisServer] = field(default_factory=list)

    def __call__(self, appendonly: bool = False) -> RedisServer:
        server = RedisServer(self.workdir / f"redis{len(self.started)}", appendonly=appendonly)
        self.started.append(server)
        server.start()
        return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server without persistence, shared by the whole session."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's Redis, emptied (FLUSHALL) before the test."""
    client = redis_server.client()
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def make_redis_server(tmp_path: Path) -> Iterator[RedisServerFactory]:
    """Start a redis-server of the test's own (`appendonly=True` for an fsynced AOF)."""
    factory = RedisServerFactory(tmp_path)
    try:
        yield factory
    finally:
        for server in factory.started:
            server.stop()
