"""Gauges the exporter reads from the queue's own state on every scrape: how long the oldest
deferred delivery has waited, and which destinations the cluster is holding back now.

Both are read, never counted, so they are right after any crash; both are bounded, so a scrape
of a huge queue costs a known number of small round trips: at most `MOST_DEFERRED` deferred
entries are looked at, and the destinations checked are those the metrics name (the first 1000,
`workers.observe.metrics`), in one round trip.

Held destinations come from the traffic gate's keys (`workers.traffic.rate_limits`):
`mailroom:rate:slow:{destination}` lives while a receiver's throttling reply slows the
destination down ("slowdown"), and `mailroom:rate:tat:{destination}` while its rate limit's next
slot lies in the future ("rate").
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from workers.observe.metrics import DESTINATIONS_KEY
from workers.queue.deferred_listing import DeferredListing
from workers.queue.redis_text import redis_text
from workers.queue.status_states import record_keys

MOST_DEFERRED = 50_000  # deferred entries looked at per scrape, at most
_SLOW = "mailroom:rate:slow:"
_RATE = "mailroom:rate:tat:"


@dataclass(frozen=True, slots=True)
class OldestDeferred:
    """The age of the oldest deferred delivery (0 when none), and whether every entry was seen."""

    seconds: float
    complete: bool


def oldest_deferred(client: redis.Redis, now: float, most: int = MOST_DEFERRED) -> OldestDeferred:
    """Seconds since the oldest deferred delivery was first queued (or replayed)."""
    oldest = now
    seen = 0
    for page in DeferredListing(client).pages():
        if page:
            pipe = client.pipeline(transaction=False)
            for entry, _ in page:
                pipe.hget(record_keys(entry.message_id)[2], entry.destination)
            for schedule in pipe.execute():
                if schedule is not None:
                    oldest = min(oldest, float(json.loads(schedule)["first_queued"]))
        seen += len(page)
        if seen >= most:
            return OldestDeferred(max(now - oldest, 0.0), complete=False)
    return OldestDeferred(max(now - oldest, 0.0), complete=True)


def held_destinations(client: redis.Redis) -> dict[str, str]:
    """Destination → why the gate holds it back now: "slowdown" (a receiver's throttling
    reply; it wins) or "rate" (its rate limit's next slot is still to come)."""
    names = sorted(redis_text(name) for name in client.smembers(DESTINATIONS_KEY))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(f"{_SLOW}{name}")
        pipe.exists(f"{_RATE}{name}")
    found = pipe.execute() if names else []
    held = {}
    for index, name in enumerate(names):
        slow, rate = found[2 * index], found[2 * index + 1]
        if slow or rate:
            held[name] = "slowdown" if slow else "rate"
    return held
