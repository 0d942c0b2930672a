"""One consumer of the event log in a Redis consumer group: the batches it reads, acknowledges,
keeps while it retries them, and those it takes over from a consumer that died.

A batch read is pending in the group until acknowledged. A consumer that dies holding one (kill
-9) leaves it pending; once it has been idle `claim_timeout` seconds another consumer of the
group takes it over (XAUTOCLAIM) before reading anything new. A consumer retrying a batch
touches it (XCLAIM JUSTID) before each try, so nobody takes over a batch that is being worked
on. A group is created reading from the oldest event the log still holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from workers.queue.events import EVENTS_KEY


class Consumer:
    """Reads, acknowledges and keeps the batches of one consumer of one group."""

    def __init__(self, client: redis.Redis, group: str, name: str, claim_timeout: float) -> None:
        self._redis = client
        self.group = group
        self._name = name
        self._idle_ms = max(int(claim_timeout * 1000), 1)

    def ensure_group(self) -> None:
        """Create the group (and an empty log) unless it exists."""
        try:
            self._redis.xgroup_create(EVENTS_KEY, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def next_batch(self, count: int, block: float) -> list[tuple[Any, Any]]:
        """Up to `count` entries: a dead consumer's stale ones first, else new ones, waiting up
        to `block` seconds for them."""
        reply: Sequence[Any] = self._redis.xautoclaim(
            EVENTS_KEY, self.group, self._name, self._idle_ms, start_id="0-0", count=count
        )
        taken = [entry for entry in reply[1] if entry and entry[1] is not None]
        if taken:
            return taken
        streams: Sequence[Any] = self._redis.xreadgroup(  # type: ignore[assignment]
            self.group,
            self._name,
            {EVENTS_KEY: ">"},
            count=count,
            block=max(int(block * 1000), 1),
        )
        return [entry for _, entries in streams or [] for entry in entries]

    def ack(self, ids: Sequence[Any]) -> None:
        if ids:
            self._redis.xack(EVENTS_KEY, self.group, *ids)

    def touch(self, ids: Sequence[Any]) -> None:
        """Keep a batch this consumer is still working on from being taken over."""
        if ids:
            self._redis.xclaim(EVENTS_KEY, self.group, self._name, 0, list(ids), justid=True)
