"""Disposition against a real Redis: delivered, deferred (attempt+1), expired and bounced into the
DLQ, and throttled (no attempt, same attempt number, last server reply kept)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import redis

from workers.model.outcome import Bounced, Deferred, Delivered, Outcome
from workers.model.reply import Reply, Step
from workers.model.report import Attempt, DeliveryReport, StepRecord
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.disposition import Disposition
from workers.queue.retry_schedule import RetryPolicy
from workers.queue.status import StatusStore, iso_time

NOW = 1_800_000_000.0
OK = Reply(250, "2.0.0", "ok", Step.DATA)
GREY = Reply(451, "4.7.1", "greylisted", Step.RCPT_TO)
UNKNOWN = Reply(550, "5.1.1", "unknown", Step.RCPT_TO)
GATE = Reply(451, "4.4.5", "throttled by Mailroom", Step.GATE)
RESOLVED = StepRecord("resolve", Reply(250, "2.0.0", "x.test -> mx", Step.RESOLVE_MX), 1.0)


def report(*outcomes: Outcome, attempted: bool = True) -> DeliveryReport:
    attempts = (Attempt(datetime.now(UTC), "mx.x.test", "127.0.0.2", ()),) if attempted else ()
    return DeliveryReport("x.test", outcomes, RESOLVED, attempts)


def setup(client: redis.Redis, max_age: float = 3600) -> tuple[Disposition, StatusStore]:
    status = StatusStore(client, ttl=3600)
    status.create("m1", "app@a.test", {"a@x.test": "x.test", "b@x.test": "x.test"}, NOW)
    disposition = Disposition(
        status,
        DeferredSet(client),
        DeadLetters(client, 3600),
        retry=RetryPolicy((60, 300), max_age, rng=random.Random(1)),
    )
    return disposition, status


def deferred_members(client: redis.Redis) -> list[bytes]:
    return list(client.zrange("mailroom:deferred", 0, -1))  # type: ignore[arg-type]


def test_mixed_outcomes(redis_client: redis.Redis) -> None:
    disposition, status = setup(redis_client)
    [summary] = disposition.apply_many(
        [("m1", 1, NOW, report(Delivered("a@x.test", OK), Deferred("b@x.test", GREY)))], NOW
    )

    assert (summary.delivered, summary.deferred) == (1, 1)
    assert deferred_members(redis_client) == [b"m1|x.test|2"]
    state = status.delivery("m1", "x.test")
    assert state is not None
    assert state.attempt == 2
    view = status.view("m1")
    assert view is not None
    assert {r["address"]: r["state"] for r in view["recipients"]} == {
        "a@x.test": "delivered",
        "b@x.test": "deferred",
    }
    assert view["attempts"][0]["steps"][0]["step"] == "resolve_mx"


def test_past_max_age_expires_into_the_dlq_with_the_servers_reply(
    redis_client: redis.Redis,
) -> None:
    disposition, _ = setup(redis_client, max_age=60)
    disposition.apply_many(
        [("m1", 3, NOW, report(Deferred("a@x.test", GREY), Bounced("b@x.test", UNKNOWN)))], NOW + 61
    )

    assert deferred_members(redis_client) == []
    [entry] = DeadLetters(redis_client, 3600).show("m1")  # one entry per (message, destination)
    assert {(r["address"], r["reason"], r["code"]) for r in entry["recipients"]} == {
        ("a@x.test", "expired", 451),
        ("b@x.test", "bounced", 550),
    }


def test_throttled_is_no_attempt_and_keeps_its_number(redis_client: redis.Redis) -> None:
    disposition, status = setup(redis_client)
    throttled = report(
        Deferred("a@x.test", GATE, 0.4), Deferred("b@x.test", GATE, 0.4), attempted=False
    )
    disposition.apply_many([("m1", 1, NOW, throttled)], NOW)

    entries: list[tuple[bytes, float]] = redis_client.zrange(  # type: ignore[assignment]
        "mailroom:deferred", 0, -1, withscores=True
    )
    [(member, due)] = entries
    assert member == b"m1|x.test|1"  # same attempt: not counted
    assert due == NOW + 0.4  # exactly the limiter's time, no jitter
    state = status.delivery("m1", "x.test")
    assert state is not None
    assert state.attempt == 1
    view = status.view("m1")
    assert view is not None
    assert view["attempts"] == []
    # Shown as held back, with why and until when (it was shown `queued`, with nothing).
    assert {
        (r["state"], r["code"], r["enhanced"], r["throttled"], r["next_attempt"])
        for r in view["recipients"]
    } == {("deferred", GATE.code, GATE.enhanced, GATE.text, iso_time(NOW + 0.4))}


def test_expiring_while_throttled_keeps_the_last_server_reply(redis_client: redis.Redis) -> None:
    disposition, status = setup(redis_client, max_age=60)
    disposition.apply_many(
        [("m1", 1, NOW, report(Deferred("a@x.test", GREY), Deferred("b@x.test", GREY)))], NOW
    )
    throttled = report(
        Deferred("a@x.test", GATE, 5.0), Deferred("b@x.test", GATE, 5.0), attempted=False
    )
    disposition.apply_many([("m1", 2, NOW, throttled)], NOW + 61)

    view = status.view("m1")
    assert view is not None
    assert {(r["state"], r["code"], r["enhanced"]) for r in view["recipients"]} == {
        ("expired", 451, "4.7.1")
    }


def test_dead_letters_written_by_the_worker_keep_only_the_domain_of_quoted_addresses(
    redis_client: redis.Redis,
) -> None:
    """The worker's disposition path writes dead letters redacted, as `status` shows replies:
    the recipient's own address only in its "address" field."""
    disposition, _ = setup(redis_client, max_age=60)
    rejected = Reply(550, "5.1.1", "<a@x.test>: Recipient address rejected", Step.RCPT_TO)
    busy = Reply(451, "4.2.1", "mailbox of b@x.test busy, try later", Step.RCPT_TO)
    disposition.apply_many(
        [("m1", 3, NOW, report(Bounced("a@x.test", rejected), Deferred("b@x.test", busy)))],
        NOW + 61,
    )

    stored = redis_client.hgetall("mailroom:dlq:entries")
    [raw] = stored.values()
    entry = json.loads(raw)
    replies = {r["address"]: (r["reason"], r["reply"]) for r in entry["recipients"]}
    assert replies == {
        "a@x.test": ("bounced", "<*@x.test>: Recipient address rejected"),
        "b@x.test": ("expired", "mailbox of *@x.test busy, try later"),
    }
    without_own_fields = [{**r, "address": ""} for r in entry["recipients"]]
    assert "a@x.test" not in json.dumps(without_own_fields)
    assert "b@x.test" not in json.dumps(without_own_fields)
