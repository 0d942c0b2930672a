"""What the exporter reads of the delivery event log on every scrape: events written in all, each
consumer's batches by outcome, and how far behind each consumer is (the age of its oldest event
not yet acknowledged). All read, never counted, and a few small round trips per consumer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis

from workers.events.dispatcher import DELIVERIES_KEY
from workers.queue.events import EVENTS_KEY, written_at
from workers.queue.redis_text import redis_text


def events_written(client: redis.Redis) -> int:
    """Events ever appended to the log (trimmed ones included); 0 before the first."""
    try:
        info: dict[Any, Any] = client.xinfo_stream(EVENTS_KEY)
    except redis.ResponseError:  # no log yet
        return 0
    return int(info.get("entries-added") or 0)


def deliveries(client: redis.Redis) -> dict[tuple[str, str], int]:
    """(consumer label, ok | failed | dead) → batches."""
    counts: dict[Any, Any] = client.hgetall(DELIVERIES_KEY)
    found = {}
    for field, value in counts.items():
        label, _, status = redis_text(field).rpartition("|")
        found[(label, status)] = int(value)
    return found


def lags(client: redis.Redis, groups: Iterable[str], now: float) -> dict[str, float]:
    """Seconds since the oldest event each group has not acknowledged was written (0: none, or
    no such group yet); the groups are listed once for all of them."""
    try:
        listed: Sequence[dict[Any, Any]] = client.xinfo_groups(EVENTS_KEY)
    except redis.ResponseError:  # no log yet
        listed = []
    known = {redis_text(g["name"]): g for g in listed}
    return {group: _lag(client, known.get(group), now) for group in groups}


def _lag(client: redis.Redis, info: dict[Any, Any] | None, now: float) -> float:
    if info is None:
        return 0.0
    oldest: str | None = None
    if info.get("pending"):
        summary: dict[Any, Any] = client.xpending(EVENTS_KEY, redis_text(info["name"]))
        oldest = redis_text(summary["min"])
    else:
        after = redis_text(info["last-delivered-id"])
        nxt: Sequence[Any] = client.xrange(EVENTS_KEY, min=f"({after}", count=1)  # type: ignore[assignment]
        oldest = redis_text(nxt[0][0]) if nxt else None
    if oldest is None:
        return 0.0
    return max(now - written_at(oldest), 0.0)
