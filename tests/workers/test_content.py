"""workers/content.py against a real Redis: round trip, TTL, flags, deletion, shared pipeline."""

from __future__ import annotations

import uuid

import pytest
import redis

from workers.model.envelope import OutboundMessage, outbound
from workers.queue.content import ContentStore, content_key

TTL = 3600


def _message(
    data: bytes, *, sender: str = "app@example.com", smtputf8: bool = False
) -> OutboundMessage:
    return outbound(uuid.uuid4().hex, sender, data, smtputf8=smtputf8)


@pytest.mark.parametrize(
    ("sender", "data", "smtputf8", "eight_bit"),
    [
        pytest.param("app@example.com", b"Subject: hi\r\n\r\nplain\r\n", False, False, id="ascii"),
        pytest.param(
            "app@example.com", "Subject: hi\r\n\r\nbücher\r\n".encode(), False, True, id="8bit"
        ),
        pytest.param(
            "jörg@example.com", "Subject: hé\r\n\r\nbücher\r\n".encode(), True, True, id="smtputf8"
        ),
        pytest.param("app@example.com", bytes(range(1, 256)) * 4, False, True, id="every-byte"),
    ],
)
def test_round_trip_keeps_bytes_and_flags(
    redis_client: redis.Redis, sender: str, data: bytes, smtputf8: bool, eight_bit: bool
) -> None:
    store = ContentStore(redis_client, ttl=TTL)
    message = _message(data, sender=sender, smtputf8=smtputf8)
    store.put(message)
    loaded = store.get(message.message_id)
    assert loaded == message
    assert loaded is not None
    assert loaded.smtputf8 is smtputf8
    assert loaded.eight_bit is eight_bit
    assert loaded.data == data


def test_put_sets_the_ttl(redis_client: redis.Redis) -> None:
    store = ContentStore(redis_client, ttl=TTL)
    message = _message(b"Subject: x\r\n\r\nx\r\n")
    store.put(message)
    ttl = redis_client.ttl(content_key(message.message_id))
    assert 0 < ttl <= TTL


def test_unknown_id_is_none(redis_client: redis.Redis) -> None:
    assert ContentStore(redis_client, ttl=TTL).get(uuid.uuid4().hex) is None


def test_delete_forgets_the_content(redis_client: redis.Redis) -> None:
    store = ContentStore(redis_client, ttl=TTL)
    kept, deleted = _message(b"a\r\n"), _message(b"b\r\n")
    store.put(kept)
    store.put(deleted)
    store.delete(deleted.message_id)
    assert store.get(deleted.message_id) is None
    assert store.get(kept.message_id) == kept


def test_put_replaces_content_of_the_same_id(redis_client: redis.Redis) -> None:
    store = ContentStore(redis_client, ttl=TTL)
    first = _message("bücher\r\n".encode(), smtputf8=True)
    second = outbound(first.message_id, "other@example.com", b"plain\r\n", smtputf8=False)
    store.put(first)
    store.put(second)
    assert store.get(first.message_id) == second


def test_put_on_a_pipeline_waits_for_the_caller(redis_client: redis.Redis) -> None:
    store = ContentStore(redis_client, ttl=TTL)
    message = _message(b"Subject: x\r\n\r\nx\r\n")
    pipe = redis_client.pipeline(transaction=True)
    store.put(message, pipe=pipe)
    assert store.get(message.message_id) is None
    pipe.execute()
    assert store.get(message.message_id) == message
    assert redis_client.ttl(content_key(message.message_id)) > 0


def test_ttl_must_be_positive(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="ttl"):
        ContentStore(redis_client, ttl=0)
