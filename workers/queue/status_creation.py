"""The producer's side of a status record: creating it (only where none exists, holding the
creator's claim), marking it enqueued, taking over a crashed producer's enqueueing, and reading
where each message stands. `StatusStore` builds on it for everything a worker records."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import redis
from redis.client import Pipeline

from workers.queue import status_scripts as scripts
from workers.queue.events import DEFAULT_MAXLEN
from workers.queue.redis_text import redis_text
from workers.queue.status_states import record_keys


class StatusCreation:
    """Creates status records and tracks whether their messages are on their queues."""

    def __init__(
        self, redis: redis.Redis, ttl: int, *, events_maxlen: int = DEFAULT_MAXLEN
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"status ttl must be a positive number of seconds, got {ttl}")
        if events_maxlen < 0:
            raise ValueError(f"events maxlen must be 0 or more, got {events_maxlen}")
        self._redis = redis
        self._ttl = ttl
        self._events_maxlen = events_maxlen
        self._mark_enqueued = redis.register_script(scripts.MARK_ENQUEUED)
        self._create = redis.register_script(scripts.CREATE)
        self._take_over = redis.register_script(scripts.TAKE_OVER)

    @staticmethod
    def _keys(message_id: str) -> list[str]:
        return record_keys(message_id)

    def create(
        self,
        message_id: str,
        sender: str,
        recipients: Mapping[str, str],
        now: float,
        pipe: Pipeline | None = None,
    ) -> bool:
        """Record a new message: every recipient (address → destination) queued, attempt 1.

        False (and nothing written) when a record exists already. With `pipe`, the commands
        are queued on the caller's pipeline and run when the caller executes it.

        :raises ValueError: no recipients, or `now` not finite.
        """
        return bool(self.create_many([(message_id, sender, recipients)], now, pipe=pipe))

    def create_many(
        self,
        messages: scripts.Messages,
        now: float,
        pipe: Pipeline | None = None,
        *,
        claim: str = "",
    ) -> list[str]:
        """`create` for many (message id, sender, recipients) at once: one script call.

        Only records that do not exist yet are written, each holding `claim` (the creator's
        token, see `take_over`); an existing record is left as it is, so a producer racing
        another with the same id can never put delivered recipients back to queued. Returns
        the ids created; with `pipe`, the call is queued on the caller's pipeline (one MULTI
        can then hold the content too) and returns [] (`created_ids` reads the reply).

        :raises ValueError: a message without recipients, or `now` not finite.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        if not messages:
            return []
        keys, args = scripts.create_arguments(messages, now, self._ttl, claim, self._events_maxlen)
        reply = self._create(keys=keys, args=args, client=pipe)
        if pipe is not None:
            return []
        return self.created_ids([message_id for message_id, *_ in messages], reply)

    @staticmethod
    def created_ids(message_ids: Sequence[str], reply: Sequence[int]) -> list[str]:
        """The ids `create_many` created, from its script's reply (indexes from 1)."""
        return [message_ids[int(index) - 1] for index in reply]

    def unmarked_claims(self, message_ids: Sequence[str]) -> list[str | None]:
        """Each message's claim while it is not marked enqueued; None once it is (or has no
        record): one round trip."""
        with self._redis.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hmget(self._keys(message_id)[0], ["created", "enqueued", "claim"])
            replies = pipe.execute()
        return [
            None if created is None or enqueued in (b"1", "1") else redis_text(claim or b"")
            for created, enqueued, claim in replies
        ]

    def take_over(self, message_id: str, seen: str, claim: str) -> bool:
        """Take over enqueueing a message still not marked enqueued, if its claim is still
        `seen`; True for exactly one of any number of callers that saw the same claim."""
        return bool(self._take_over(keys=[self._keys(message_id)[0]], args=[seen, claim]))

    def mark_all_enqueued(self, message_ids: Sequence[str]) -> int:
        """Note that the messages' deliveries are on their queues, in one round trip; returns how
        many of the ids were known."""
        if not message_ids:
            return 0
        keys = [self._keys(message_id)[0] for message_id in message_ids]
        return int(self._mark_enqueued(keys=keys))

    def delete(self, message_id: str) -> None:
        """Forget a message's status record entirely (a submit that failed part-way)."""
        self._redis.delete(*self._keys(message_id))

    def is_enqueued(self, message_id: str) -> bool:
        """Whether `mark_all_enqueued` was called for this (existing) message."""
        return self._redis.hget(self._keys(message_id)[0], "enqueued") in (b"1", "1")

    def progress(self, message_ids: Sequence[str]) -> list[bool | None]:
        """Where each message stands, in one round trip: None, no status record; else whether
        `mark_all_enqueued` was called for it."""
        with self._redis.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hmget(self._keys(message_id)[0], ["created", "enqueued"])
            replies = pipe.execute()
        return [
            None if created is None else enqueued in (b"1", "1") for created, enqueued in replies
        ]
