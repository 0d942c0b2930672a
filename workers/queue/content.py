"""The claim check: each message's content stored once in Redis, read back by its id.

Tasks, the deferred set and the dead-letter queue carry ids only; a worker turns a message id
back into the `OutboundMessage` here. Content expires after CONTENT_TTL (by default
`record_ttl`: MAX_AGE plus a day; see retention.py, which also sets STATUS_TTL and
DEAD_LETTER_TTL), so nothing is left behind once every delivery is over.

Keys:
    mailroom:content:{message_id}   hash {sender: UTF-8, data: the RFC 5322 bytes,
                                    smtputf8: "1" or "0"}, EXPIRE ttl
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.client import Pipeline

from workers.model.envelope import OutboundMessage, outbound

_PREFIX = "mailroom:content:"
_DAY = 86400


def record_ttl(max_age: float) -> int:
    """Seconds a message's records live: MAX_AGE, plus a day to read how it ended."""
    return int(max_age) + _DAY


def content_key(message_id: str) -> str:
    """The Redis key holding a message's content."""
    return f"{_PREFIX}{message_id}"


# KEYS: the content key of each message. ARGV: ttl, "1" to keep existing content ("0": replace
# it), then sender, data, smtputf8 per message.
_PUT = """
for i, key in ipairs(KEYS) do
  local at = 3 * i
  if ARGV[2] ~= '1' or redis.call('EXISTS', key) == 0 then
    redis.call('DEL', key)
    redis.call('HSET', key, 'sender', ARGV[at], 'data', ARGV[at + 1], 'smtputf8', ARGV[at + 2])
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return #KEYS
"""


class ContentStore:
    """Puts, gets and deletes message content by message id."""

    def __init__(self, redis: redis.Redis, ttl: int) -> None:
        if ttl <= 0:
            raise ValueError(f"content ttl must be a positive number of seconds, got {ttl}")
        self._redis = redis
        self._ttl = ttl
        self._put = redis.register_script(_PUT)

    def put(self, message: OutboundMessage, pipe: Pipeline | None = None) -> None:
        """Store `message` with the store's TTL, replacing any content under the same id.

        With `pipe`, the commands are queued on the caller's pipeline (so content and status
        can be written in one MULTI) and run when the caller executes it.
        """
        self.put_many([message], pipe=pipe)

    def put_many(
        self,
        messages: Sequence[OutboundMessage],
        pipe: Pipeline | None = None,
        *,
        keep_existing: bool = False,
    ) -> None:
        """`put` for many messages at once: one script call, so one command on `pipe`.

        `keep_existing` leaves content already stored under an id as it is (producers racing
        with one idempotency key: the first content stays).
        """
        if not messages:
            return
        args: list[bytes | int] = [self._ttl, b"1" if keep_existing else b"0"]
        for message in messages:
            args += [message.sender.encode(), message.data, b"1" if message.smtputf8 else b"0"]
        keys = [content_key(message.message_id) for message in messages]
        self._put(keys=keys, args=args, client=pipe)

    def get(self, message_id: str) -> OutboundMessage | None:
        """The message stored under `message_id`, or None if there is none (or it expired)."""
        return self.get_many([message_id]).get(message_id)

    def get_many(self, message_ids: Sequence[str]) -> dict[str, OutboundMessage]:
        """`get` for many ids in one round trip; ids with no content are left out."""
        pipe = self._redis.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.hmget(content_key(message_id), ["sender", "data", "smtputf8"])
        found = {}
        for message_id, fields in zip(message_ids, pipe.execute(), strict=True):
            sender, data, smtputf8 = (_as_bytes(value) for value in fields)
            if sender is not None and data is not None:
                found[message_id] = outbound(
                    message_id, sender.decode(), data, smtputf8=smtputf8 == b"1"
                )
        return found

    def refresh(self, message_id: str) -> bool:
        """Give a message's content the store's full TTL again (a replay's fresh age); False
        when there is none left."""
        return bool(self._redis.expire(content_key(message_id), self._ttl))

    def delete(self, message_id: str) -> None:
        """Forget a message's content (every delivery of it is over)."""
        self._redis.delete(content_key(message_id))


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The client is built with decode_responses=False, but the type allows either.
    return value.encode() if isinstance(value, str) else value
