"""The event log written by the status scripts themselves, against a real Redis: each state change
its event, in the same script; a throttle none; and no log at all with EVENTS_MAXLEN=0."""

from __future__ import annotations

import time

import redis

from workers.model.reply import Reply, Step
from workers.model.states import RecipientState as S
from workers.queue.dead_letters import DeadLetters
from workers.queue.deletion import Deletion, DeletionPolicy
from workers.queue.events import EVENTS_KEY, EventLog
from workers.queue.status import Record, StatusStore

GREYLISTED = Reply(451, "4.7.1", "greylisted", Step.RCPT_TO)
GATE = Reply(451, "4.4.5", "throttled by Mailroom", Step.GATE)


def types(client: redis.Redis) -> list[tuple[str, str]]:
    return [(e["type"], e["recipient"]) for e in EventLog(client).page("0-0", 100)]


def test_each_state_change_writes_its_event(redis_client: redis.Redis) -> None:
    store = StatusStore(redis_client, ttl=3600)
    now = time.time()
    labels = '{"tags":["t"]}'
    store.create_many([("m1", "app@x.test", {"a@one.test": "one.test"}, labels)], now)
    record = Record("m1", {"a@one.test": (S.DEFERRED, GREYLISTED)}, [], 2, now + 60, 1, "mx.one")
    store.record_many([record])
    store.throttle_many([("m1", ["a@one.test"], GATE, now + 5)])  # no attempt: no event
    store.record_many([Record("m1", {"a@one.test": (S.EXPIRED, GREYLISTED)}, [], None, None, 2)])
    assert store.requeue("m1", "one.test", now) == ["a@one.test"]
    deletion = Deletion(redis_client, DeadLetters(redis_client, 3600), DeletionPolicy(3600, 1.0))
    [deleted] = deletion.delete("m1", now)
    assert deleted.recipients == ("a@one.test",)

    assert types(redis_client) == [
        (kind, "a@one.test") for kind in ("queued", "deferred", "expired", "replayed", "deleted")
    ]
    events = EventLog(redis_client).page("0-0", 100)
    assert all(e["tags"] == ["t"] and e["message_id"] == "m1" for e in events)
    deferred = events[1]
    assert (deferred["attempt"], deferred["mx_host"], deferred["step"]) == (1, "mx.one", "rcpt_to")
    assert deferred["reply"] == {"code": 451, "enhanced": "4.7.1", "text": "greylisted"}
    assert events[3]["attempt"] == 3  # the replay's fresh attempt number


def test_a_refused_move_writes_no_event(redis_client: redis.Redis) -> None:
    store = StatusStore(redis_client, ttl=3600)
    store.create("m2", "app@x.test", {"a@one.test": "one.test"}, time.time())
    ok = Reply(250, "2.0.0", "ok", Step.DATA)
    store.record_many([Record("m2", {"a@one.test": (S.DELIVERED, ok)}, [], None, None, 1)])
    store.record_many([Record("m2", {"a@one.test": (S.DEFERRED, GREYLISTED)}, [], 2, None, 1)])
    assert types(redis_client) == [("queued", "a@one.test"), ("delivered", "a@one.test")]


def test_maxlen_zero_writes_no_log(redis_client: redis.Redis) -> None:
    store = StatusStore(redis_client, ttl=3600, events_maxlen=0)
    store.create("m3", "app@x.test", {"a@one.test": "one.test"}, time.time())
    store.record_many([Record("m3", {"a@one.test": (S.DEFERRED, GREYLISTED)}, [], 2, None, 1)])
    assert redis_client.exists(EVENTS_KEY) == 0
