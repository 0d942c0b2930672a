"""Who is delivering a (message, destination) right now: an expiring lease in Redis.

kombu's Redis transport hands an unacknowledged task to another worker once it is older than the
visibility timeout, even while the first worker is still running it. A delivery therefore takes
a lease before its session and skips when another live worker holds one; the lease expires on
its own when its holder dies, so a crashed worker never blocks a delivery for longer than the
lease's TTL (a little above the session deadline, which settings keep below the visibility
timeout).

Key: `mailroom:lease:{message_id}|{destination}` → holder token, with PX expiry.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import redis

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_LEASE_MARGIN = 60.0  # seconds a lease outlives the session deadline


def lease_ttl(session_timeout: float, visibility_timeout: float) -> float:
    """Seconds a delivery or connection lease lives unless released.

    Above the session deadline, below the visibility timeout: a dead worker's leases are gone by
    the time kombu hands its task to another worker, so the delivery runs then instead of being
    parked until the lease expires.
    """
    return min(session_timeout + _LEASE_MARGIN, (session_timeout + visibility_timeout) / 2)


class Leases:
    """Take and release per-delivery leases."""

    def __init__(self, client: redis.Redis, ttl: float) -> None:
        self._redis = client
        self._ttl_ms = int(ttl * 1000)
        self._release = client.register_script(_RELEASE)

    def take(self, message_id: str, destination: str) -> str | None:
        """Return a token when the lease was free, or None when another holder has it."""
        token = uuid.uuid4().hex
        taken = self._redis.set(lease_key(message_id, destination), token, nx=True, px=self._ttl_ms)
        return token if taken else None

    def take_many(self, deliveries: Sequence[tuple[str, str]]) -> list[str | None]:
        """`take` for many (message_id, destination) pairs in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        tokens = [uuid.uuid4().hex for _ in deliveries]
        for (message_id, destination), token in zip(deliveries, tokens, strict=True):
            pipe.set(lease_key(message_id, destination), token, nx=True, px=self._ttl_ms)
        return [
            token if taken else None for token, taken in zip(tokens, pipe.execute(), strict=True)
        ]

    def remaining(self, message_id: str, destination: str) -> float:
        """Seconds until the current lease expires (0 when there is none)."""
        milliseconds = int(self._redis.pttl(lease_key(message_id, destination)))
        return max(milliseconds, 0) / 1000

    def release(self, message_id: str, destination: str, token: str) -> None:
        """Give the lease back, unless it expired and somebody else holds it now."""
        self.release_many([(message_id, destination, token)])

    def release_many(self, leases: Sequence[tuple[str, str, str]]) -> None:
        """`release` for many (message_id, destination, token) in one round trip."""
        if not leases:
            return
        pipe = self._redis.pipeline(transaction=False)
        for message_id, destination, token in leases:
            self._release(keys=[lease_key(message_id, destination)], args=[token], client=pipe)
        pipe.execute()


def lease_key(message_id: str, destination: str) -> str:
    """The key of one delivery's lease."""
    return f"mailroom:lease:{message_id}|{destination}"
