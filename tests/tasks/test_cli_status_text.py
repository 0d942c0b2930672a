"""`mailroom status` never prints a server's raw bytes, even from a record written before the
workers escaped reply text (or by anything else that put a control character in one)."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer
from tests.support.status import record_one
from tests.tasks.test_cli import run_mailroom
from tests.tasks.test_cli_pipeline import GOOD, env, send
from workers.model.reply import Reply, Step
from workers.model.states import RecipientState
from workers.queue.status import StatusStore

RAW = "\x1b]0;owned\x07\x1b[2J\x9b31m queued"


def test_status_escapes_control_characters_in_stored_reply_text(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    sent = send(redis_server, tmp_path, *GOOD, "--json")
    assert sent.status == 0, sent.stderr
    message_id = json.loads(sent.stdout)["id"]
    step = {"step": "data", "code": 250, "enhanced": "2.0.0", "ms": 1.0, "text": RAW}
    attempt = {"at": 1.0, "destination": "one.test", "host": "mx.one.test", "steps": [step]}
    reply = Reply(250, "2.0.0", RAW, Step.DATA)
    store = StatusStore(redis_client, 3600)
    record_one(
        store, message_id, {"a@one.test": (RecipientState.DELIVERED, reply)}, [attempt], None
    )

    human = run_mailroom("status", message_id, env=env(redis_server), cwd=tmp_path)

    assert human.status == 0, human.stderr
    assert all(line.isprintable() for line in human.stdout.splitlines()), human.stdout
    assert human.stdout.count("\\x1b]0;owned\\x07\\x1b[2J\\x9b31m queued") == 2
