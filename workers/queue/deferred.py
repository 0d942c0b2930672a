"""The deferred set: deliveries waiting for their next attempt, scored by the time they are due.

Retries never ride on Celery ETA/countdown (docs/contract.md): a deferred delivery is a member of a
sorted set, and sweepers move the due ones back to their shard queues. Claiming is atomic
(Lua): due members move to a "claimed" set scored by claim time, so two sweepers never get the
same member; a sweeper releases what it has enqueued, and claims left behind by a sweeper that
died before enqueuing are recovered (`recover`) and become due again — at least once, never lost.

Keys:
    mailroom:deferred           zset member "{message_id}|{destination}|{attempt}", score due time
    mailroom:deferred:claimed   zset member the same, score the time it was claimed
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import NamedTuple

import redis

DEFERRED_KEY = "mailroom:deferred"
CLAIMED_KEY = "mailroom:deferred:claimed"
_SEPARATOR = "|"
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

# KEYS: deferred, claimed. ARGV: now, limit. Returns the members claimed.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[2], ARGV[1], member)
end
return due
"""

# KEYS: deferred, claimed. ARGV: now, claimed before this time. Returns how many moved back.
_RECOVER = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
for _, member in ipairs(stale) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZADD', KEYS[1], ARGV[1], member)
end
return #stale
"""


class DeferredEntry(NamedTuple):
    """One deferred delivery: the ids of a delivery task item."""

    message_id: str
    destination: str
    attempt: int


def _member(message_id: str, destination: str, attempt: int) -> str:
    if _SEPARATOR in message_id or _SEPARATOR in destination:
        raise ValueError(f"message id and destination must not contain {_SEPARATOR!r}")
    return f"{message_id}{_SEPARATOR}{destination}{_SEPARATOR}{int(attempt)}"


def _entry(member: bytes | str) -> DeferredEntry:
    text = member.decode() if isinstance(member, bytes) else member
    message_id, destination, attempt = text.split(_SEPARATOR)
    return DeferredEntry(message_id, destination, int(attempt))


def _finite(now: float) -> float:
    if not math.isfinite(now):
        raise ValueError(f"time must be finite, got {now}")
    return now


class DeferredSet:
    """Deliveries waiting in Redis until they are due."""

    def __init__(self, redis: redis.Redis) -> None:
        self._redis = redis
        self._claim_due = redis.register_script(_CLAIM_DUE)
        self._recover = redis.register_script(_RECOVER)

    def defer(self, message_id: str, destination: str, attempt: int, due: float) -> None:
        """Add (or reschedule) a delivery to be tried again at `due` (UNIX time)."""
        self._redis.zadd(DEFERRED_KEY, {_member(message_id, destination, attempt): _finite(due)})

    def claim_due(self, now: float, limit: int = 500) -> list[DeferredEntry]:
        """Atomically move up to `limit` deliveries due by `now` to the claimed set.

        Returns them, earliest due first. The caller enqueues them, then calls `release`.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        members = self._claim_due(keys=[DEFERRED_KEY, CLAIMED_KEY], args=[_finite(now), limit])
        return [_entry(member) for member in members]

    def release(self, items: Iterable[tuple[str, str, int]]) -> None:
        """Forget claimed deliveries once they have been enqueued."""
        members = [_member(*item) for item in items]
        if members:
            self._redis.zrem(CLAIMED_KEY, *members)

    def recover(self, now: float, older_than: float = 60.0) -> int:
        """Make claims older than `older_than` seconds due again at `now`; returns how many.

        A claim that old means its sweeper died between claiming and enqueuing.
        """
        cutoff = _finite(now) - older_than
        return int(self._recover(keys=[DEFERRED_KEY, CLAIMED_KEY], args=[now, cutoff]))

    def count(self) -> int:
        """Deliveries deferred or claimed and not yet released."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zcard(DEFERRED_KEY)
        pipe.zcard(CLAIMED_KEY)
        deferred, claimed = pipe.execute()
        return int(deferred) + int(claimed)

    def __len__(self) -> int:
        return self.count()

    def remove(self, message_id: str, destination: str) -> int:
        """Drop every deferred or claimed entry of one delivery; returns how many were dropped.

        Scans the sets (ZSCAN), as the member holds the attempt too: meant for operator
        actions (dead-letter replay and purge), not for the delivery path.
        """
        pattern = _GLOB_SPECIAL.sub(r"\\\1", _member(message_id, destination, 0)[:-1]) + "*"
        removed = 0
        for key in (DEFERRED_KEY, CLAIMED_KEY):
            members = [member for member, _ in self._redis.zscan_iter(key, match=pattern)]
            if members:
                removed += int(self._redis.zrem(key, *members))
        return removed
