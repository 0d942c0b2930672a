"""XOAUTH2 relays through the whole pipeline: producer → Redis → Celery workers → the relay,
with the token endpoint and the relay of `tests.support.oauth_server`.

A revoked client secret holds relay deliveries (deferred with the reason, nothing bounced, no
dead letter), and fixing it lets them go by themselves; the token and the secret appear nowhere
(logs, status records, task arguments, anything in Redis but the sealed token). Two worker
processes (four processes each) share one token.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks.api import Mailroom
from tests.support.dns_server import DnsServer
from tests.support.oauth_relay import CLIENT_ID, CLIENT_SECRET, OAuthSetup
from tests.support.redis_server import RedisServerFactory
from tests.tasks.conftest import Deploy
from tests.tasks.pipeline_support import (
    WorkerProcess,
    make_settings,
    running_worker,
    wait_for,
    worker_env,
)
from workers.oauth.cache import KEY_PREFIX
from workers.observe.metrics import read_metrics
from workers.queue.status import StatusStore
from workers.traffic.relay_hold import HOLD_KEY

pytestmark = pytest.mark.slow


def _fields(n: int) -> dict[str, object]:
    return {
        "sender": "app@example.test",
        "to": [f"user{n}@one.example"],
        "subject": f"Note {n}",
        "text": "hello",
    }


def _recipients(client: redis.Redis, message_id: str) -> list[dict[str, object]]:
    view = StatusStore(client, ttl=60).view(message_id)
    return [] if view is None else list(view["recipients"])


def _why(recipient: dict[str, object]) -> str:
    """Why a deferred recipient waits: the gate's words, else its last reply."""
    return str(recipient.get("throttled") or recipient.get("reply") or "")


def _state(client: redis.Redis, message_id: str) -> str | None:
    view = StatusStore(client, ttl=60).view(message_id)
    return None if view is None else str(view["state"])


def _everything_in(client: redis.Redis) -> bytes:
    """Every value Redis holds, but the sealed token's (encrypted on purpose)."""
    parts: list[Any] = []
    for key in client.scan_iter():
        if key.startswith(KEY_PREFIX.encode()) and not key.endswith(b":lock"):
            continue
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key))
        elif kind == b"hash":
            parts += [item for pair in client.hgetall(key).items() for item in pair]
        elif kind == b"list":
            parts += client.lrange(key, 0, -1)
        elif kind == b"zset":
            parts += client.zrange(key, 0, -1)
        elif kind == b"set":
            parts += client.smembers(key)
        parts.append(key)
    return b"".join(part for part in parts if isinstance(part, bytes))


def test_a_revoked_secret_holds_relay_mail_until_it_is_fixed(
    redis_client: redis.Redis,
    deploy: Deploy,
    oauth: OAuthSetup,
    capfd: pytest.CaptureFixture[str],
) -> None:
    values = oauth.microsoft_settings(
        connection_reuse=False, relay_probe_interval=0.5, rate_limits='{"relay": "100/s"}'
    )
    _settings, app, mailroom = deploy(**values)

    with running_worker(app):
        first = mailroom.notify(**_fields(0))
        wait_for(lambda: _state(redis_client, first) == "delivered", what="the first delivery")
        oauth.endpoint.revoke(CLIENT_ID)
        held = [mailroom.notify(**_fields(n)) for n in (1, 2, 3)]
        wait_for(lambda: redis_client.exists(HOLD_KEY) == 1, what="the hold")
        wait_for(
            lambda: all(
                "relay held" in _why(r) for m in held for r in _recipients(redis_client, m)
            ),
            what="every held recipient to show the hold "
            + repr([_recipients(redis_client, m) for m in held]),
        )
        for message_id in held:
            [recipient] = _recipients(redis_client, message_id)
            assert recipient["state"] == "deferred"
            assert "AADSTS7000215" in _why(recipient)
            assert "to fix: OAUTH_CLIENT_SECRET" in _why(recipient)
            assert "next_attempt" in recipient
        assert redis_client.zcard("mailroom:dead") == 0
        assert read_metrics(redis_client).relay_held
        while_held = _everything_in(redis_client)

        oauth.endpoint.restore(CLIENT_ID)
        wait_for(
            lambda: all(_state(redis_client, m) == "delivered" for m in held),
            timeout=20,
            what="the held messages to go once the secret works",
        )

    assert redis_client.exists(HOLD_KEY) == 0
    assert not read_metrics(redis_client).relay_held
    assert len(oauth.relay.messages) == 4
    tokens = [issued.token for issued in oauth.endpoint.issued()]
    tokens += [a.password for a in oauth.relay.auth_attempts if a.password]
    secrets = [CLIENT_SECRET, *tokens]
    captured = capfd.readouterr()  # the worker's log (Celery writes it to stderr)
    logged = captured.out + captured.err
    assert "relay held" in logged
    everything = while_held + _everything_in(redis_client)
    for secret in secrets:
        assert secret not in logged
        assert secret.encode() not in everything


def test_two_worker_processes_share_one_token(
    make_redis_server: RedisServerFactory,
    dns_server: DnsServer,
    mx_port: int,
    oauth: OAuthSetup,
    tmp_path: Path,
) -> None:
    server = make_redis_server()
    values = oauth.microsoft_settings(rate_limits='{"relay": "1000/s"}')
    settings = make_settings(server.url, dns_server, mx_port, **values)
    env = worker_env(settings)
    env.update({f"MAILROOM_{k.upper()}": str(v) for k, v in values.items()})
    client = server.client()
    mailroom = Mailroom(settings, client=client)
    ids = mailroom.notify_many([_fields(n) for n in range(40)])

    with _workers(env, tmp_path, 2) as workers:
        wait_for(
            lambda: all(_state(client, m) == "delivered" for m in ids),
            timeout=30,
            what="every message",
        )
        assert all(worker.running() for worker in workers)

    assert len(oauth.relay.messages) == 40
    assert oauth.endpoint.token_requests() == 1
    logs = "".join(path.read_text(errors="replace") for path in tmp_path.glob("worker*.log"))
    assert CLIENT_SECRET not in logs
    assert oauth.endpoint.issued()[0].token not in logs
    client.close()


class _workers:
    """`mailroom worker` subprocesses (prefork, 4 processes each), killed on exit."""

    def __init__(self, env: dict[str, str], directory: Path, count: int) -> None:
        self._env, self._directory, self._count = env, directory, count
        self._workers: list[WorkerProcess] = []

    def __enter__(self) -> list[WorkerProcess]:
        for n in range(self._count):
            log = self._directory / f"worker{n}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [sys.executable, "-m", "tasks.cli", "worker", "--concurrency", "4"],
                    cwd=self._directory,
                    env=self._env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._workers.append(WorkerProcess(process, log))
        return self._workers

    def __exit__(self, *exc: object) -> None:
        for worker in self._workers:
            worker.kill()
        for worker in self._workers:
            print(f"---- {worker.log.name} ----")
            print(worker.log.read_text(errors="replace")[-5000:])
