"""What `Mailroom.notify_many` and `submit` leave in a real Redis, with no worker running.

Each test reads back the shard queues (kombu's envelopes of normal Celery task messages), the
task-sent events Flower listens to, the status records, the content and the idempotency keys,
including after a producer crashed part-way: the state such a crash leaves is written first,
then the retry runs.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from settings import Settings
from tasks.api import SLICE, Mailroom
from tasks.notification import InvalidNotification
from tasks.routing import DELIVER_TASK, all_shard_queues
from tests.support.redis_server import RedisServer
from tests.tasks.pipeline_support import SHARDS, queued_task_bodies
from workers.model.envelope import outbound
from workers.queue.content import ContentStore
from workers.queue.status import StatusStore


@pytest.fixture
def mailroom(redis_server: RedisServer, redis_client: redis.Redis) -> Mailroom:
    """A producer on the session's Redis (flushed before each test by `redis_client`)."""
    settings = Settings(redis_url=redis_server.url, shards=SHARDS)
    # A crashed producer's unmarked record is taken over this soon (no live one to wait for).
    return Mailroom(settings, client=redis_client, takeover_after=0.2)


def fields(n: int, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "sender": "Shop <shop@example.com>",
        "to": [f"user{n}@example.org"],
        "subject": f"Order {n}",
        "text": f"Hello {n}\n",
    }
    values.update(overrides)
    return values


def tasks(client: redis.Redis) -> list[dict[str, Any]]:
    """The task messages of every shard queue, each queue's in the order workers take them
    (kombu LPUSHes and BRPOPs)."""
    return [m for q in all_shard_queues(SHARDS) for m in queued_task_bodies(client, q)[::-1]]


def queued(client: redis.Redis) -> list[tuple[str, str, int]]:
    """Every delivery on the shard queues, as (message id, destination, attempt)."""
    return [tuple(item) for task in tasks(client) for item in task["decoded_body"][0][0]]


def store(client: redis.Redis) -> tuple[StatusStore, ContentStore]:
    return StatusStore(client, ttl=60), ContentStore(client, ttl=60)


def idempotency_key(key: str) -> str:
    return "mailroom:idem:" + hashlib.sha256(key.encode()).hexdigest()


def test_a_chunk_is_stored_recorded_and_enqueued(
    mailroom: Mailroom, redis_client: redis.Redis
) -> None:
    batch = [fields(n, cc=[f"copy{n}@example.net"]) for n in range(250)]
    ids = mailroom.notify_many(batch)

    assert len(set(ids)) == 250
    status, content = store(redis_client)
    for n, message_id in enumerate(ids):
        assert status.is_enqueued(message_id)
        view = status.view(message_id)
        assert view is not None
        assert {r["address"]: r["state"] for r in view["recipients"]} == {
            f"user{n}@example.org": "queued",
            f"copy{n}@example.net": "queued",
        }
        message = content.get(message_id)
        assert message is not None
        assert f"Subject: Order {n}\r\n".encode() in message.data
    expected = [(i, d, 1) for i in ids for d in ("example.net", "example.org")]
    assert sorted(queued(redis_client)) == sorted(expected)


def test_delivery_tasks_are_celery_messages_and_flower_hears_of_each(
    mailroom: Mailroom, redis_client: redis.Redis
) -> None:
    events = redis_client.pubsub()
    events.psubscribe("*celeryev*")  # kombu's fanout channel of the celeryev exchange
    events.get_message(timeout=1.0)  # the subscription's confirmation

    ids = mailroom.notify_many([fields(n) for n in range(250)])

    published = tasks(redis_client)
    assert [len(task["decoded_body"][0][0]) for task in published] == [100, 100, 50]
    assert [item[0] for task in published for item in task["decoded_body"][0][0]] == ids
    for task in published:
        assert task["headers"]["task"] == DELIVER_TASK
        assert task["content-type"] == "application/json"
    sent: list[str] = []
    deadline = time.monotonic() + 5
    while len(sent) < len(published) and time.monotonic() < deadline:
        event = events.get_message(timeout=0.5)
        if event is not None and event["type"] == "pmessage":
            envelope = json.loads(event["data"])
            assert envelope["properties"]["body_encoding"] == "base64"
            body = json.loads(base64.b64decode(envelope["body"]))
            if body["type"] == "task-sent":
                sent.append(body["uuid"])
    events.close()
    assert sorted(sent) == sorted(task["headers"]["id"] for task in published)


def test_bad_input_anywhere_leaves_nothing(mailroom: Mailroom, redis_client: redis.Redis) -> None:
    with pytest.raises(InvalidNotification, match=r"^notifications\[2\]\.to\[0\]: "):
        mailroom.notify_many([fields(0), fields(1), fields(2, to=["not an address"])])
    assert redis_client.dbsize() == 0


def test_a_bad_attachment_anywhere_leaves_nothing(
    mailroom: Mailroom, redis_client: redis.Redis, tmp_path: Path
) -> None:
    good = {"filename": "a.pdf", "content": b"%PDF"}
    with pytest.raises(
        InvalidNotification, match=r"^notifications\[1\]\.attachments\[1\]\.filename: "
    ):
        mailroom.notify_many(
            [
                fields(0, attachments=[good]),
                fields(1, attachments=[good, {**good, "filename": "../a"}]),
            ]
        )
    with pytest.raises(InvalidNotification, match=r"^attachments\[0\]: cannot read "):
        mailroom.notify(**fields(2, attachments=[tmp_path / "missing.pdf"]))
    assert redis_client.dbsize() == 0


def test_an_attachment_given_as_a_path_is_stored_encoded_in_the_message(
    mailroom: Mailroom, redis_client: redis.Redis, tmp_path: Path
) -> None:
    invoice = tmp_path / "invoice.pdf"
    invoice.write_bytes(b"%PDF-1.7 " + bytes(range(256)))
    message_id = mailroom.notify(**fields(0, attachments=[invoice], reply_to="help@example.com"))
    _status, content = store(redis_client)
    stored = content.get(message_id)
    assert stored is not None
    parsed = email.message_from_bytes(stored.data, policy=email.policy.default)
    assert parsed["Reply-To"] == "help@example.com"
    [attached] = parsed.iter_attachments()
    assert attached.get_filename() == "invoice.pdf"
    assert attached.get_content() == invoice.read_bytes()


def test_a_key_given_twice_in_one_call_makes_one_message(
    mailroom: Mailroom, redis_client: redis.Redis
) -> None:
    ids = mailroom.notify_many(
        [fields(0, idempotency_key="k"), fields(1), fields(2, idempotency_key="k")]
    )

    assert ids[0] == ids[2] != ids[1]
    assert sorted(queued(redis_client)) == sorted(
        [(ids[0], "example.org", 1), (ids[1], "example.org", 1)]
    )
    message = store(redis_client)[1].get(ids[0])
    assert message is not None
    assert b"Subject: Order 0\r\n" in message.data


def test_a_key_used_again_in_a_later_slice_of_one_call_makes_one_message(
    mailroom: Mailroom, redis_client: redis.Redis
) -> None:
    batch = [fields(n) for n in range(SLICE + 1)]
    batch[0]["idempotency_key"] = batch[SLICE]["idempotency_key"] = "same"
    ids = mailroom.notify_many(batch)

    assert ids[SLICE] == ids[0]
    assert len(set(ids)) == SLICE
    assert sorted(item[0] for item in queued(redis_client)) == sorted(ids[:SLICE])


def test_a_key_already_enqueued_sends_nothing_more(
    mailroom: Mailroom, redis_client: redis.Redis
) -> None:
    [first] = mailroom.notify_many([fields(0, idempotency_key="order-0")])
    [again] = mailroom.notify_many([fields(0, idempotency_key="order-0", subject="changed")])

    assert again == first
    assert queued(redis_client) == [(first, "example.org", 1)]


def test_retry_after_a_crash_before_storing_stores_the_message_under_the_first_id(
    mailroom: Mailroom, redis_client: redis.Redis
) -> None:
    # The crashed producer had taken the key for its id, and written nothing else.
    crashed_id = "0123456789abcdef0123456789abcdef"
    redis_client.set(idempotency_key("order-7"), crashed_id)

    [message_id] = mailroom.notify_many([fields(7, idempotency_key="order-7")])

    assert message_id == crashed_id
    status, content = store(redis_client)
    assert status.is_enqueued(crashed_id)
    message = content.get(crashed_id)
    assert message is not None
    assert f"Message-ID: <{crashed_id}@example.com>".encode() in message.data
    assert queued(redis_client) == [(crashed_id, "example.org", 1)]


def test_retry_after_a_crash_before_enqueueing_enqueues_what_was_stored(
    mailroom: Mailroom, redis_client: redis.Redis
) -> None:
    [stored_id] = mailroom.notify_many([fields(8, idempotency_key="order-8")])
    # What a crash between the MULTI and the publish leaves: records, but no task, no mark.
    redis_client.hdel(f"mailroom:msg:{stored_id}", "enqueued")
    redis_client.delete(*all_shard_queues(SHARDS))

    [message_id] = mailroom.notify_many(
        [fields(8, idempotency_key="order-8", subject="a retry's subject")]
    )

    assert message_id == stored_id
    status, content = store(redis_client)
    assert status.is_enqueued(stored_id)
    assert queued(redis_client) == [(stored_id, "example.org", 1)]
    message = content.get(stored_id)
    assert message is not None
    assert b"Subject: Order 8\r\n" in message.data  # the stored content was kept


def test_submit_stores_and_enqueues_the_bytes_as_given(
    mailroom: Mailroom, redis_client: redis.Redis
) -> None:
    data = b"Subject: hi\r\nMessage-ID: <s1@example.com>\r\n\r\nbody\r\n"
    message = outbound("s1", "shop@example.com", data, smtputf8=False)

    assert mailroom.submit(message, ["a@example.org", "b@example.net"]) == "s1"

    status, content = store(redis_client)
    assert status.is_enqueued("s1")
    assert content.get("s1") == message
    assert sorted(queued(redis_client)) == [("s1", "example.net", 1), ("s1", "example.org", 1)]
