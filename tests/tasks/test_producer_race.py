"""Producers racing with the same idempotency keys, as separate processes on a real Redis.

Each round, every process sends the same keys at once (a barrier lines them up); afterwards
Redis must hold, per key, one message id, one status record and one delivery task entry.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
from typing import Any

import redis

from settings import Settings
from tasks.api import Mailroom
from tests.support.redis_server import RedisServer
from tests.tasks.pipeline_support import SHARDS
from tests.tasks.test_producer import queued
from workers.queue.status import StatusStore

PRODUCERS = 4
ROUNDS = 15
KEYS = 4


def _produce(
    url: str,
    barrier: multiprocessing.synchronize.Barrier,
    results: Any,
) -> None:
    mailroom = Mailroom(Settings(redis_url=url, shards=SHARDS))
    found: list[tuple[str, str]] = []
    for round_ in range(ROUNDS):
        keys = [f"order-{round_}-{n}" for n in range(KEYS)]
        notifications = [
            {
                "sender": "shop@example.com",
                "to": [f"user{n}@example.org", f"user{n}@example.net"],
                "subject": f"Order {key}",
                "text": "Hello\n",
                "idempotency_key": key,
            }
            for n, key in enumerate(keys)
        ]
        barrier.wait(timeout=30)
        found += zip(keys, mailroom.notify_many(notifications), strict=True)
    results.put(found)


def test_producers_racing_on_the_same_keys_make_one_message_each(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PRODUCERS)
    results = context.Queue()
    processes = [
        context.Process(target=_produce, args=(redis_server.url, barrier, results))
        for _ in range(PRODUCERS)
    ]
    for process in processes:
        process.start()
    try:
        found = [results.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
    assert all(process.exitcode == 0 for process in processes)

    ids: dict[str, set[str]] = {}
    for pairs in found:
        for key, message_id in pairs:
            ids.setdefault(key, set()).add(message_id)
    assert len(ids) == ROUNDS * KEYS
    assert all(len(winners) == 1 for winners in ids.values()), ids
    message_ids = {winner for winners in ids.values() for winner in winners}
    records = {
        str(key, "ascii").rpartition(":")[2] for key in redis_client.scan_iter("mailroom:msg:*")
    }
    assert records == message_ids
    # One task entry per delivery: nobody enqueued a message a second time.
    assert sorted(queued(redis_client)) == sorted(
        (message_id, destination, 1)
        for message_id in message_ids
        for destination in ("example.net", "example.org")
    )
    status = StatusStore(redis_client, ttl=60)
    for message_id in message_ids:
        assert status.is_enqueued(message_id)
        view = status.view(message_id)
        assert view is not None
        assert {r["state"] for r in view["recipients"]} == {"queued"}
