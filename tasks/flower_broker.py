"""Flower's broker page and queue-length API, with the two queues Mailroom keeps outside Celery.

Flower lists the Celery queues it knows (kombu's Redis lists). Retries wait in Mailroom's
deferred set, and failed deliveries in its dead-letter queue, neither a Celery queue; an
operator looking at Flower's broker page should still see them. `install` wraps Flower's Redis
broker so its queue list ends with two more rows, counted in the same pipeline round trip style
Flower uses (ZCARD of each set). Only Flower's process calls it (`tasks.celery_main`).
"""

from __future__ import annotations

from typing import Any

DEFERRED_ROW = "mailroom deferred (retries waiting)"
DEAD_ROW = "mailroom dead letters"
# workers.queue.deferred and workers.queue.dead_letters own these keys; named here so Flower's
# process needs no more of Mailroom than its Celery app.
_DEFERRED_KEYS = ("mailroom:deferred", "mailroom:deferred:claimed")
_DEAD_KEY = "mailroom:dlq"


def install() -> None:
    """Make Flower's Redis broker list the deferred and dead-letter counts (once per process)."""
    from flower.utils import broker

    original = broker.RedisBase.queues
    if getattr(original, "mailroom_rows", False):
        return

    async def queues(self: Any, names: Any) -> list[dict[str, Any]]:
        # Before Flower's own: it closes its client when done.
        async with self.redis.pipeline() as pipe:
            for key in (*_DEFERRED_KEYS, _DEAD_KEY):
                pipe.zcard(key)
            deferred, claimed, dead = await pipe.execute()
        rows: list[dict[str, Any]] = await original(self, names)
        rows.append({"name": DEFERRED_ROW, "messages": int(deferred) + int(claimed)})
        rows.append({"name": DEAD_ROW, "messages": int(dead)})
        return rows

    queues.mailroom_rows = True  # type: ignore[attr-defined]
    broker.RedisBase.queues = queues
