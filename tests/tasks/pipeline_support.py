"""Helpers for the pipeline tests: settings for a test deployment, an embedded Celery worker,
and waiting on the status record.

The worker is Celery's own test worker (`celery.contrib.testing.worker.start_worker`) on the
threads pool with the real Redis broker, never `task_always_eager`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from settings import Settings
from tasks.routing import INTAKE_QUEUE, all_shard_queues
from tests.support.dns_server import DnsServer

SHARDS = 4
REPO = Path(__file__).resolve().parents[2]
_TIMEOUTS = ("connect_timeout", "command_timeout", "data_timeout", "session_timeout")


def make_settings(redis_url: str, dns: DnsServer, mx_port: int, **overrides: Any) -> Settings:
    """Settings of a small test deployment: fast timeouts, short retries."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "shards": SHARDS,
        "mx_port": mx_port,
        "dns_nameservers": f"{dns.address[0]}:{dns.address[1]}",
        "helo_name": "client.mailroom.test",
        "connect_timeout": 1,
        "command_timeout": 2,
        "data_timeout": 2,
        "session_timeout": 5,
        "visibility_timeout": 30,
        "retry_delays": "1",
        "max_age": 3600,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_worker(app: Celery, concurrency: int = 4) -> Iterator[None]:
    """An embedded worker consuming the intake and every shard queue."""
    queues = [INTAKE_QUEUE, *all_shard_queues(SHARDS)]
    app.conf.task_queues = None
    with start_worker(
        app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        loglevel="WARNING",
        queues=queues,
        shutdown_timeout=20,
    ):
        yield


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll `predicate` every 50 ms; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def queued_task_bodies(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The Celery messages waiting in `queue`: kombu's envelope with its body decoded."""
    messages = []
    for raw in client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        envelope["decoded_body"] = json.loads(body)
        messages.append(envelope)
    return messages


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a `mailroom worker` subprocess running the test deployment `settings`."""
    [nameserver] = settings.dns_nameservers
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "MAILROOM_REDIS_URL": settings.redis_url,
        "MAILROOM_SHARDS": str(settings.shards),
        "MAILROOM_MX_PORT": str(settings.mx_port),
        "MAILROOM_DNS_NAMESERVERS": f"{nameserver.ip}:{nameserver.port}",
        "MAILROOM_HELO_NAME": settings.helo_name,
        "MAILROOM_RETRY_DELAYS": ",".join(str(delay) for delay in settings.retry_delays),
        "MAILROOM_MAX_AGE": str(settings.max_age),
        "MAILROOM_VISIBILITY_TIMEOUT": str(settings.visibility_timeout),
    }
    env.update({f"MAILROOM_{name.upper()}": str(getattr(settings, name)) for name in _TIMEOUTS})
    return env


_EXIT_TIMEOUT = 20.0


@dataclass
class WorkerProcess:
    """One `mailroom worker` subprocess, leader of its own process group."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker's process group (a crash); waits until it is gone."""
        if self.running():
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=_EXIT_TIMEOUT)

    def terminate(self) -> None:
        """SIGTERM the worker (Celery's warm shutdown), without waiting."""
        if self.running():
            os.kill(self.pid, signal.SIGTERM)
