"""Deferral, expiry and dead letters through a real worker and its sweeper.

Retries come from the deferred sorted set (never a Celery countdown): the sweeper in the worker
moves due entries back to their shard queue. Settings here retry every second.
"""

from __future__ import annotations

from typing import Any

import redis

from tests.support.smtp_sink import MakeSink
from tests.tasks.conftest import Deploy
from tests.tasks.pipeline_support import running_worker, wait_for
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.status import StatusStore


def notification(*to: str) -> dict[str, Any]:
    return {"sender": "app@example.test", "to": list(to), "subject": "s", "text": "t"}


def view(client: redis.Redis, message_id: str) -> dict[str, Any]:
    record = StatusStore(client, ttl=60).view(message_id)
    assert record is not None
    return record


def states(client: redis.Redis, message_id: str) -> dict[str, str]:
    return {r["address"]: r["state"] for r in view(client, message_id)["recipients"]}


def test_deferred_recipient_is_retried_by_the_sweeper_then_expires_into_the_dlq(
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, mailroom = deploy(max_age=3)
    message_id = mailroom.notify(**notification("451-greylist@implicit.test"))

    with running_worker(app):
        wait_for(
            lambda: states(redis_client, message_id) != {"451-greylist@implicit.test": "queued"}
        )
        assert DeferredSet(redis_client).count() == 1  # waiting in the sorted set, not in Celery
        wait_for(lambda: view(redis_client, message_id)["state"] == "failed", timeout=20)

    record = view(redis_client, message_id)
    [recipient] = record["recipients"]
    assert (recipient["state"], recipient["code"], recipient["enhanced"]) == (
        "expired",
        451,
        "4.7.1",
    )
    # The first try, then at least one retry moved back by the sweeper (the 4.7.1 also slows
    # the destination down, so fewer retries fit in MAX_AGE than RETRY_DELAYS alone allow).
    assert len(record["attempts"]) >= 2
    # One attempt per transaction the sink saw (a retry may reuse the parked connection).
    assert sum(len(s.rcpt_to) for s in sink.sessions) == len(record["attempts"])
    [dead] = DeadLetters(redis_client, ttl=60).list()
    assert (dead["message_id"], dead["destination"], dead["reason"]) == (
        message_id,
        "implicit.test",
        "expired",
    )
    assert dead["recipients"][0]["code"] == 451
    assert DeferredSet(redis_client).count() == 0


def test_bounce_is_dead_lettered_and_the_others_delivered(
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, mailroom = deploy()
    message_id = mailroom.notify(
        **notification("550-unknown@implicit.test", "ok@implicit.test", "x@missing.test")
    )

    with running_worker(app):
        wait_for(lambda: view(redis_client, message_id)["state"] == "partially_delivered")

    assert states(redis_client, message_id) == {
        "550-unknown@implicit.test": "bounced",
        "ok@implicit.test": "delivered",
        "x@missing.test": "bounced",
    }
    dead = {e["destination"]: e for e in DeadLetters(redis_client, ttl=60).show(message_id)}
    assert set(dead) == {"implicit.test", "missing.test"}
    assert dead["implicit.test"]["recipients"][0]["enhanced"] == "5.1.1"
    assert dead["missing.test"]["recipients"][0]["enhanced"] == "5.1.2"
    assert sink.messages[0].rcpt_tos == ("ok@implicit.test",)


def test_replay_delivers_an_expired_message_with_a_fresh_age(
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
) -> None:
    _settings, app, mailroom = deploy(max_age=1)
    message_id = mailroom.notify(**notification("a@implicit.test"))
    status = StatusStore(redis_client, ttl=60)
    first = status.delivery(message_id, "implicit.test")
    assert first is not None

    with running_worker(app):  # nothing listens on 127.0.0.5: refused until it expires
        wait_for(lambda: view(redis_client, message_id)["state"] == "failed", timeout=20)
        assert states(redis_client, message_id) == {"a@implicit.test": "expired"}
        sink = make_sink("127.0.0.5", port=mx_port)
        assert mailroom.replay([message_id]) == 1
        wait_for(lambda: view(redis_client, message_id)["state"] == "delivered")

    assert len(sink.messages) == 1
    assert DeadLetters(redis_client, ttl=60).show(message_id) == []
    again = status.delivery(message_id, "implicit.test")
    assert again is not None
    assert again.first_queued > first.first_queued  # a fresh age
