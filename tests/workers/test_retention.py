"""Retention against a real Redis: the settings, dead letters that expire and keep their
message's records alive, and the workers' sweeper pruning old dead letters."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from settings import Settings, SettingsError, load_settings
from workers.model.envelope import outbound
from workers.model.reply import Code, Reply, Step
from workers.queue.content import ContentStore, content_key
from workers.queue.dead_letters import DLQ_KEY, ENTRIES_KEY, DeadLetters, dead_recipient
from workers.queue.deferred import DeferredSet
from workers.queue.retention import retention
from workers.queue.status import StatusStore
from workers.queue.sweeper import Sweeper

UNKNOWN = Reply(Code.MAILBOX_UNAVAILABLE, "5.1.1", "no such user", Step.RCPT_TO)
DAY = 86400


def test_retention_defaults_to_max_age_plus_a_day_and_a_week_of_dead_letters() -> None:
    kept = retention(Settings(max_age=3600))
    assert (kept.content, kept.status, kept.dead_letters) == (3600 + DAY, 3600 + DAY, 7 * DAY)
    kept = retention(Settings(max_age=3600, content_ttl=7200, status_ttl=9000, dead_letter_ttl=60))
    assert (kept.content, kept.status, kept.dead_letters) == (7200, 9000, 60)


@pytest.mark.parametrize("name", ["content_ttl", "status_ttl"])
def test_content_and_status_must_outlive_max_age(name: str) -> None:
    with pytest.raises(SettingsError, match=f"MAILROOM_{name.upper()}: must be more than"):
        load_settings(max_age=3600, **{name: 3600})


def test_a_dead_letter_expires_and_keeps_its_message_records_as_long(
    redis_client: redis.Redis,
) -> None:
    message_id = uuid.uuid4().hex
    ContentStore(redis_client, ttl=50).put(
        outbound(message_id, "a@example.com", b"x\r\n", smtputf8=False)
    )
    StatusStore(redis_client, ttl=50).create(
        message_id, "a@example.com", {"b@example.org": "example.org"}, time.time()
    )

    DeadLetters(redis_client, ttl=5000).add(
        message_id,
        "example.org",
        "bounced",
        [dead_recipient("b@example.org", UNKNOWN)],
        time.time(),
    )

    for key in (DLQ_KEY, ENTRIES_KEY, content_key(message_id), f"mailroom:msg:{message_id}"):
        assert 4990 <= redis_client.ttl(key) <= 5000, key
    for key in (f"mailroom:rcpt:{message_id}", f"mailroom:dlv:{message_id}"):
        assert 4990 <= redis_client.ttl(key) <= 5000, key


def test_a_dead_letter_never_shortens_a_longer_ttl(redis_client: redis.Redis) -> None:
    message_id = uuid.uuid4().hex
    ContentStore(redis_client, ttl=9000).put(
        outbound(message_id, "a@example.com", b"x\r\n", smtputf8=False)
    )

    DeadLetters(redis_client, ttl=100).add(
        message_id,
        "example.org",
        "bounced",
        [dead_recipient("b@example.org", UNKNOWN)],
        time.time(),
    )

    assert redis_client.ttl(content_key(message_id)) > 8990


def test_the_sweeper_prunes_dead_letters_older_than_their_ttl(redis_client: redis.Redis) -> None:
    dead = DeadLetters(redis_client, ttl=3600)
    now = time.time()
    old, recent = uuid.uuid4().hex, uuid.uuid4().hex
    for message_id, at in ((old, now - 3700), (recent, now - 60)):
        dead.add(message_id, "example.org", "bounced", [dead_recipient("b@x.org", UNKNOWN)], at)
    sweeper = Sweeper(DeferredSet(redis_client), lambda items: None, prune=dead.prune)

    sweeper.sweep_once()

    assert [entry["message_id"] for entry in dead.list()] == [recent]
