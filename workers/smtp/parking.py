"""The idle connections a pool has parked, by key, each with the timer that retires it."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from workers.smtp.connection import Connection, PoolKey


class Parking:
    """Parked connections per key, oldest first; taking one out cancels its timer."""

    def __init__(self) -> None:
        self._idle: dict[PoolKey, list[tuple[Connection, asyncio.TimerHandle]]] = defaultdict(list)

    def park(self, key: PoolKey, connection: Connection, expiry: asyncio.TimerHandle) -> None:
        self._idle[key].append((connection, expiry))

    def newest(self, key: PoolKey) -> Connection | None:
        """Take out the most recently parked connection for `key`, if any."""
        parked = self._idle.get(key)
        if not parked:
            return None
        connection, expiry = parked.pop()
        expiry.cancel()
        return connection

    def oldest(self, destination: str) -> Connection | None:
        """Take out the least recently parked connection to `destination` (of its first server
        with one), if any."""
        for key, parked in self._idle.items():
            if key.destination == destination and parked:
                connection, expiry = parked.pop(0)
                expiry.cancel()
                if not parked:
                    del self._idle[key]
                return connection
        return None

    def keys(self, destination: str) -> list[PoolKey]:
        """The keys of `destination` with a connection parked."""
        return [
            key for key, parked in self._idle.items() if parked and key.destination == destination
        ]

    def remove(self, key: PoolKey, connection: Connection) -> None:
        """Forget `connection` (its timer fired)."""
        parked = self._idle.get(key, [])
        for index, (candidate, _) in enumerate(parked):
            if candidate is connection:
                del parked[index]
                break
        if not parked:
            self._idle.pop(key, None)

    def count(self, key: PoolKey | None = None) -> int:
        """How many connections are parked (for `key`, or in all)."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(parked) for parked in self._idle.values())

    def drain(self) -> list[tuple[PoolKey, Connection]]:
        """Take out every parked connection."""
        drained = []
        for key, parked in self._idle.items():
            for connection, expiry in parked:
                expiry.cancel()
                drained.append((key, connection))
        self._idle.clear()
        return drained
