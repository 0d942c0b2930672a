"""The claim check: each message's content stored once in Redis, read back by its id.

Tasks, the deferred set and the dead-letter queue carry ids only; a worker turns a message id
back into the `OutboundMessage` here. Content expires with the message (`record_ttl`: MAX_AGE
plus a day, for content, status records and dead letters alike), so nothing is left behind once
every delivery is over.

Keys:
    mailroom:content:{message_id}   hash {sender: UTF-8, data: the RFC 5322 bytes,
                                    smtputf8: "1" or "0"}, EXPIRE ttl
"""

from __future__ import annotations

import redis
from redis.client import Pipeline

from workers.envelope import OutboundMessage, outbound

_PREFIX = "mailroom:content:"
_DAY = 86400


def record_ttl(max_age: float) -> int:
    """Seconds a message's records live: MAX_AGE, plus a day to read how it ended."""
    return int(max_age) + _DAY


def content_key(message_id: str) -> str:
    """The Redis key holding a message's content."""
    return f"{_PREFIX}{message_id}"


class ContentStore:
    """Puts, gets and deletes message content by message id."""

    def __init__(self, redis: redis.Redis, ttl: int) -> None:
        if ttl <= 0:
            raise ValueError(f"content ttl must be a positive number of seconds, got {ttl}")
        self._redis = redis
        self._ttl = ttl

    def put(self, message: OutboundMessage, pipe: Pipeline | None = None) -> None:
        """Store `message` with the store's TTL, replacing any content under the same id.

        With `pipe`, the commands are queued on the caller's pipeline (so content and status
        can be written in one MULTI) and run when the caller executes it.
        """
        target = self._redis.pipeline(transaction=True) if pipe is None else pipe
        key = content_key(message.message_id)
        target.delete(key)
        target.hset(
            key,
            mapping={
                "sender": message.sender.encode(),
                "data": message.data,
                "smtputf8": b"1" if message.smtputf8 else b"0",
            },
        )
        target.expire(key, self._ttl)
        if pipe is None:
            target.execute()

    def get(self, message_id: str) -> OutboundMessage | None:
        """The message stored under `message_id`, or None if there is none (or it expired)."""
        fields = self._redis.hmget(content_key(message_id), ["sender", "data", "smtputf8"])
        sender, data, smtputf8 = (_as_bytes(value) for value in fields)
        if sender is None or data is None:
            return None
        return outbound(message_id, sender.decode(), data, smtputf8=smtputf8 == b"1")

    def delete(self, message_id: str) -> None:
        """Forget a message's content (every delivery of it is over)."""
        self._redis.delete(content_key(message_id))


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The client is built with decode_responses=False, but the type allows either.
    return value.encode() if isinstance(value, str) else value
