"""The batch runner's checks before any network traffic, against a real Redis."""

from __future__ import annotations

import time

import redis

from workers.batch import BatchRunner, Item
from workers.content import ContentStore
from workers.dead_letters import DeadLetters
from workers.deferred import DeferredSet
from workers.delivery import DeliveryAgent
from workers.disposition import Disposition
from workers.leases import Leases
from workers.mx import MxResolver
from workers.runtime import runtime
from workers.smtp_record import Timeouts
from workers.status import StatusStore

NOW = 1_800_000_000.0


def runner(client: redis.Redis) -> BatchRunner:
    status = StatusStore(client, ttl=3600)
    deferred = DeferredSet(client)
    # The agent is never reached in these tests: any network attempt would fail them (port 9).
    agent = DeliveryAgent(
        resolver=MxResolver([("127.0.0.1", 9)], port=9, timeout=0.2),
        mx_port=9,
        relay=None,
        helo="client.mailroom.test",
        timeouts=Timeouts(connect=0.2, command=0.2, data=0.2, session=0.5),
    )
    return BatchRunner(
        agent=agent,
        content=ContentStore(client, ttl=3600),
        status=status,
        leases=Leases(client, ttl=30),
        deferred=deferred,
        disposition=Disposition(
            status, deferred, DeadLetters(client, 3600), delays=(60,), max_age=3600
        ),
        submit=runtime().submit,
        clock=lambda: NOW,
    )


def test_leased_delivery_is_parked_until_the_lease_expires(redis_client: redis.Redis) -> None:
    StatusStore(redis_client, ttl=3600).create("m1", "app@x.test", {"a@one.test": "one.test"}, NOW)
    holder = Leases(redis_client, ttl=30).take("m1", "one.test")
    assert holder is not None

    assert runner(redis_client).run([Item("m1", "one.test", 1)]) == []

    entries: list[tuple[bytes, float]] = redis_client.zrange(  # type: ignore[assignment]
        "mailroom:deferred", 0, -1, withscores=True
    )
    [(member, due)] = entries
    assert member == b"m1|one.test|1"
    assert NOW + 25 < due <= NOW + 30


def test_stale_attempt_and_done_deliveries_are_skipped(redis_client: redis.Redis) -> None:
    status = StatusStore(redis_client, ttl=3600)
    status.create("m1", "app@x.test", {"a@one.test": "one.test"}, time.time())

    # attempt 2 was never scheduled: a stale or forged item does nothing and parks nothing
    assert runner(redis_client).run([Item("m1", "one.test", 2), Item("nope", "one.test", 1)]) == []
    assert redis_client.zcard("mailroom:deferred") == 0
    assert redis_client.keys("mailroom:lease:*") == []
