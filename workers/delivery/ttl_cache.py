"""A bounded in-memory cache whose entries expire after their own TTL, on an injected clock."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most `limit` entries: when full, the expired ones go first, then the oldest."""

    def __init__(self, clock: Callable[[], float], limit: int) -> None:
        self._clock = clock
        self._limit = limit
        self._entries: dict[K, tuple[V, float]] = {}

    def get(self, key: K) -> V | None:
        """The value cached for `key`, or None when there is none or it expired."""
        entry = self._entries.get(key)
        if entry is None or self._clock() >= entry[1]:
            return None
        return entry[0]

    def put(self, key: K, value: V, ttl: float) -> None:
        """Cache `value` for `ttl` seconds."""
        entries = self._entries
        expiry = self._clock() + ttl
        if len(entries) >= self._limit:
            now = self._clock()
            for old in [old for old, (_, expires) in entries.items() if expires <= now]:
                del entries[old]
        if len(entries) >= self._limit:
            del entries[next(iter(entries))]
        entries[key] = (value, expiry)
