"""`mailroom flower` hands Flower's process only what Flower needs: the broker settings and its
own basic auth, never the relay's credentials or any other MAILROOM_* variable.

A real `mailroom flower` on loopback with the session's Redis; its environment is read from
/proc/PID/environ once Flower answers HTTP (after the exec that replaces the CLI's process).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from tests.tasks.pipeline_support import REPO, wait_for

RELAY_PASSWORD = "relay-secret-8c1f"
FLOWER_AUTH = "admin:flower-secret-77d2"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture
def flower(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[int, int]]:
    """A running `mailroom flower` configured like a relay deployment; yields (pid, port)."""
    port = _free_port()
    auth_file = tmp_path / "flower_basic_auth"
    auth_file.write_text(FLOWER_AUTH + "\n")
    redis_file = tmp_path / "redis_url"
    redis_file.write_text(redis_server.url + "\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "UNRELATED": "kept",
        "MAILROOM_REDIS_URL_FILE": str(redis_file),
        "MAILROOM_SHARDS": "4",
        "MAILROOM_FLOWER_LISTEN": f"127.0.0.1:{port}",
        "MAILROOM_FLOWER_BASIC_AUTH_FILE": str(auth_file),
        "MAILROOM_DELIVERY": "relay",
        "MAILROOM_RELAY_HOST": "smtp.example.com",
        "MAILROOM_RELAY_USERNAME": "svc@example.com",
        "MAILROOM_RELAY_PASSWORD": RELAY_PASSWORD,
    }
    log = (tmp_path / "flower.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "flower"],
        cwd=tmp_path,  # no .env there
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: _status(f"http://127.0.0.1:{port}/") != 0 or process.poll() is not None,
            timeout=20,
            what="Flower to answer",
        )
        assert process.poll() is None, (tmp_path / "flower.log").read_text()
        yield process.pid, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def test_flowers_process_gets_no_relay_credentials(flower: tuple[int, int]) -> None:
    pid, port = flower
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    environ = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    assert RELAY_PASSWORD not in raw.decode()
    assert sorted(name for name in environ if name.startswith("MAILROOM_RELAY")) == []
    assert "MAILROOM_FLOWER_BASIC_AUTH" not in environ
    assert "MAILROOM_FLOWER_BASIC_AUTH_FILE" not in environ
    # What Flower needs: its broker, the shard count for its broker page, its own basic auth.
    assert environ["MAILROOM_SHARDS"] == "4"
    # A Redis URL given as a file stays a file: its password would be in the environment.
    assert "MAILROOM_REDIS_URL" not in environ
    assert Path(environ["MAILROOM_REDIS_URL_FILE"]).read_text().startswith("redis://")
    assert environ["FLOWER_BASIC_AUTH"] == FLOWER_AUTH
    assert environ["UNRELATED"] == "kept"
    # And the basic auth read from its file is the one Flower enforces.
    assert _status(f"http://127.0.0.1:{port}/") == 401
    assert _status(f"http://127.0.0.1:{port}/", FLOWER_AUTH) == 200
