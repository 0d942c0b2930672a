"""The producer's write path: store each message once with its status record (one MULTI), publish
its delivery tasks by shard, mark it enqueued; and, for a message another producer created and
never marked, wait, then take its enqueueing over (see `tasks.api` for the order and why)."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from settings import Settings
from tasks.routing import DELIVER_TASK, shard_of, shard_queue
from workers.model.envelope import OutboundMessage
from workers.observe.metrics import count_enqueued
from workers.queue.content import ContentStore
from workers.queue.retention import retention
from workers.queue.status import StatusStore

MAX_BATCH = 100  # deliveries per mailroom.deliver task
SLICE = 1000  # notifications per round of writes (a multiple of MAX_BATCH: no part-filled tasks)
_STORE_BYTES = 16 * 1024 * 1024  # message bytes per MULTI, beyond which a new one starts
# A live producer marks its slice enqueued one publish after its MULTI (milliseconds); a record
# still unmarked this long after another producer found it is a crashed producer's.
TAKEOVER_AFTER = 5.0
_TAKEOVER_POLL = 0.05


@dataclass(frozen=True, slots=True)
class Write:
    """One message to put on its queues; `message` is None when it is stored already."""

    message_id: str
    message: OutboundMessage | None
    destinations: dict[str, str]  # envelope recipient → destination
    labels: str = ""  # tags and metadata, JSON (tasks.labels)


class QueueWriter:
    """Writes prepared messages to Redis and their delivery tasks to the shard queues."""

    def __init__(
        self, client: redis.Redis, app: Celery, settings: Settings, *, takeover_after: float
    ) -> None:
        self._redis = client
        self._app = app
        self._shards = settings.shards
        self._takeover_after = takeover_after
        kept = retention(settings)
        self._content = ContentStore(client, kept.content)
        self._status = StatusStore(client, kept.status, events_maxlen=settings.events_maxlen)

    def enqueue(self, items: Iterable[tuple[str, str, int]]) -> None:
        """Put deliveries on their shard queues (the sweeper and DLQ replay use this too)."""
        batches: dict[int, list[list[Any]]] = defaultdict(list)
        for message_id, destination, attempt in items:
            batches[_shard(destination, self._shards)].append([message_id, destination, attempt])
        self._enqueue(batches)

    def write(self, writes: Sequence[Write]) -> None:
        """Store, enqueue, mark enqueued: each step for all `writes` before the next starts.

        Only the producer whose MULTI created a record enqueues its message. A record found
        already there (another producer's, racing with the same idempotency key, or one that
        crashed) is left to its creator for `_takeover_after` seconds, then taken over by
        exactly one of the producers waiting for it.
        """
        if not writes:
            return
        claim = uuid.uuid4().hex
        created = self._store([write for write in writes if write.message is not None], claim)
        ours = [write for write in writes if write.message_id in created]
        others = [write for write in writes if write.message_id not in created]
        ours += self._take_over(others, claim)
        self.enqueue(
            (write.message_id, destination, 1)
            for write in ours
            for destination in sorted(set(write.destinations.values()))
        )
        self._status.mark_all_enqueued([write.message_id for write in ours])
        count_enqueued(self._redis, len({write.message_id for write in ours}))

    def _take_over(self, writes: Sequence[Write], claim: str) -> list[Write]:
        """Of messages another producer created, those it has not marked enqueued within
        `_takeover_after` seconds and whose enqueueing this producer took over."""
        ids = list(dict.fromkeys(write.message_id for write in writes))
        seen = dict(zip(ids, self._status.unmarked_claims(ids), strict=True))
        deadline = time.monotonic() + self._takeover_after
        while (waiting := [i for i, claim_seen in seen.items() if claim_seen is not None]) and (
            time.monotonic() < deadline
        ):
            time.sleep(_TAKEOVER_POLL)
            # A record marked enqueued (or gone) drops out; the others keep the claim first seen.
            for message_id, now in zip(waiting, self._status.unmarked_claims(waiting), strict=True):
                if now is None:
                    seen[message_id] = None
        taken = {
            message_id
            for message_id, claim_seen in seen.items()
            if claim_seen is not None and self._status.take_over(message_id, claim_seen, claim)
        }
        return [write for write in writes if write.message_id in taken]

    def _store(self, writes: Sequence[Write], claim: str) -> set[str]:
        """Content and status records in one transaction: each message has both, or neither.

        One script call for the contents and one for the records, in one MULTI, however many
        messages; a new MULTI starts only past _STORE_BYTES of content. Existing content and
        records are kept as they are; returns the ids whose records this call created.
        """
        now = time.time()
        groups: list[list[OutboundMessage]] = [[]]
        size = 0
        for write in writes:
            assert write.message is not None  # _write passes only messages to store
            if groups[-1] and size + write.message.size > _STORE_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(write.message)
            size += write.message.size
        by_id = {write.message_id: write for write in writes}
        created: set[str] = set()
        with self._redis.pipeline(transaction=True) as pipe:
            for messages in filter(None, groups):
                self._content.put_many(messages, pipe=pipe, keep_existing=True)
                records = [
                    (
                        m.message_id,
                        m.sender,
                        by_id[m.message_id].destinations,
                        by_id[m.message_id].labels,
                    )
                    for m in messages
                ]
                self._status.create_many(records, now, pipe=pipe, claim=claim)
                _, reply = pipe.execute()
                created.update(self._status.created_ids([m.message_id for m in messages], reply))
        return created

    def _enqueue(self, batches: Mapping[int, list[list[Any]]]) -> None:
        """Publish the delivery tasks: Celery's own messages (so workers and Flower see normal
        tasks), all written to Redis in one pipeline where kombu can batch."""
        if not batches:
            return
        with self._app.producer_or_acquire() as producer, _publish_batch(producer):
            for shard, items in sorted(batches.items()):
                queue = shard_queue(shard)
                for start in range(0, len(items), MAX_BATCH):
                    self._app.send_task(
                        DELIVER_TASK,
                        args=[items[start : start + MAX_BATCH]],
                        queue=queue,
                        producer=producer,
                    )


def _publish_batch(producer: Any) -> contextlib.AbstractContextManager[Any]:
    """kombu's `Producer.batch()` (kombu 5.7+): the Redis writes of every publish inside it go
    in one pipeline when the block ends, and none if it raises; before 5.7, one at a time."""
    batch = getattr(producer, "batch", None)
    return batch() if batch is not None else contextlib.nullcontext()


@functools.lru_cache(maxsize=4096)
def _shard(destination: str, shards: int) -> int:
    # Hashing a destination costs microseconds, and a bulk send repeats a few destinations.
    return shard_of(destination, shards)
