"""What producers call: validate, store once, record every recipient, enqueue ids by shard.

`Mailroom(settings)` is the injectable form; `notify()` and `notify_many()` use a default instance
built from the environment on first use (as `httpx.get` wraps `httpx.Client`). Every input is
validated before anything is written, so bad input leaves nothing behind. The content is stored
once (claim check); delivery tasks carry `[message_id, destination, attempt]` only, grouped by
the destination's shard, many deliveries per task (Celery's own cost per task would otherwise cap
throughput).

Writes go in this order, for every notification of a call, so that a crash at any point leaves
nothing a retry cannot finish: content and status record (one MULTI, so both or neither), then
the delivery tasks, then the `enqueued` mark. Each step is one round trip for up to SLICE
notifications, not one per notification: the MULTI holds the whole slice (split above
_STORE_BYTES), the tasks are Celery's own messages published in one pipeline (kombu's
`Producer.batch`), and one script marks them all.

Idempotency: `mailroom:idem:{sha256(key)}` → message id for IDEMPOTENCY_TTL seconds. The key is
taken first (SET NX, read back in the same pipeline), so two producers racing with one key get
one message id. Content and status records are created only where none exist, and only the
producer whose MULTI created a record enqueues it; the message is marked `enqueued` last, so a
producer that crashed in between is found out by the next one with the same key, which waits
TAKEOVER_AFTER for the mark, then takes the enqueueing over (compare and set on the record's
claim: one producer of many), stored first if the crash came before the content was. A key
given twice in one call gives the first notification's id to both.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from settings import Settings, load_settings
from tasks.app import make_celery
from tasks.message import build_message
from tasks.notification import InvalidNotification, Notification
from tasks.routing import DELIVER_TASK, destination_of, shard_of, shard_queue
from workers.model.envelope import OutboundMessage
from workers.queue.content import ContentStore
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.redis_client import redis_client
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
class _Write:
    """One message to put on its queues; `message` is None when it is stored already."""

    message_id: str
    message: OutboundMessage | None
    destinations: dict[str, str]  # envelope recipient → destination


class Mailroom:
    """The producer API bound to one deployment's settings."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        app: Celery | None = None,
        takeover_after: float = TAKEOVER_AFTER,
    ) -> None:
        self._settings = settings
        self._takeover_after = takeover_after
        self._redis = client or redis_client(settings.redis_url, settings.redis_timeout)
        self._app = app or make_celery(settings)
        kept = retention(settings)
        self._content = ContentStore(self._redis, kept.content)
        self._status = StatusStore(self._redis, kept.status)
        self._dead = DeadLetters(self._redis, kept.dead_letters)
        self._deferred = DeferredSet(self._redis)

    def notify(self, **fields: Any) -> str:
        """Queue one notification; returns its message id.

        :raises InvalidNotification: bad input (nothing was stored or enqueued).
        """
        return self.notify_many([fields])[0]

    def notify_many(self, notifications: Iterable[Mapping[str, Any] | Notification]) -> list[str]:
        """Queue many notifications at once; returns their ids in order.

        :raises InvalidNotification: any bad input, naming its index (nothing was stored).
        """
        prepared = [self._prepare(index, n) for index, n in enumerate(notifications)]
        ids: list[str] = []
        settled: set[str] = set()  # ids this call has written, or found already enqueued
        for start in range(0, len(prepared), SLICE):
            ids += self._queue(prepared[start : start + SLICE], settled)
        return ids

    def submit(self, message: OutboundMessage, recipients: Iterable[str]) -> str:
        """Queue a message that arrived whole (SMTP submission): store it as is, enqueue it.

        `recipients` are envelope addresses already checked by the caller (the SMTP listener
        validates each RCPT TO); `message.data` is delivered byte for byte. Returns the message
        id once the content, the status record and every delivery task are in Redis.
        """
        mode = self._settings.delivery.value
        destinations = {address: destination_of(address, mode) for address in recipients}
        if not destinations:
            raise InvalidNotification("recipients: at least one is required")
        self._write([_Write(message.message_id, message, destinations)])
        return message.message_id

    def withdraw(self, message_id: str) -> bool:
        """Take back a message whose `submit` failed part-way; True once nothing of it is left.

        `submit` stores content and status in one MULTI, publishes the delivery tasks, then
        marks the record enqueued. Marked means every task was published (only the reply was
        lost): the message stays queued and this returns False. Otherwise the status record
        goes first, so a delivery task that did get published finds none and skips
        (workers.batch), then the content.

        :raises redis.RedisError: Redis is unreachable; the unmarked record then expires with
            the message TTL.
        """
        if self._status.is_enqueued(message_id):
            return False
        self._status.delete(message_id)
        self._content.delete(message_id)
        return True

    def enqueue(self, items: Iterable[tuple[str, str, int]]) -> None:
        """Put deliveries on their shard queues (the sweeper and DLQ replay use this too)."""
        batches: dict[int, list[list[Any]]] = defaultdict(list)
        for message_id, destination, attempt in items:
            batches[_shard(destination, self._settings.shards)].append(
                [message_id, destination, attempt]
            )
        self._enqueue(batches)

    def replay(self, message_ids: Iterable[str]) -> int:
        """Put the dead deliveries of these messages back on their shard queues, with a fresh age.

        Order matters for a crash: the status record is requeued and the deliveries enqueued
        before the dead letters are removed, so a crash leaves at worst a stale DLQ entry (a
        second replay clears it), never a requeued recipient with no task. The content gets its
        full TTL again with the status record: the fresh age may run to MAX_AGE once more.
        """
        replayed = 0
        for message_id in dict.fromkeys(message_ids):
            items = []
            for entry in self._dead.show(message_id):
                destination = str(entry["destination"])
                if self._status.requeue(message_id, destination, time.time()):
                    state = self._status.delivery(message_id, destination)
                    assert state is not None  # requeue found recipients, so the delivery exists
                    self._deferred.remove(message_id, destination)
                    items.append((message_id, destination, state.attempt))
            if items:
                self._content.refresh(message_id)
            self.enqueue(items)
            self._dead.take(message_id)
            replayed += len(items)
        return replayed

    def _prepare(
        self, index: int, given: Mapping[str, Any] | Notification
    ) -> tuple[Notification, str, OutboundMessage]:
        try:
            notification = (
                given if isinstance(given, Notification) else Notification.validate_dict(given)
            )
            message_id = uuid.uuid4().hex
            return notification, message_id, self._build(notification, message_id)
        except InvalidNotification as exc:
            if index == 0:
                raise
            raise InvalidNotification(f"notifications[{index}].{exc}") from exc

    def _build(self, notification: Notification, message_id: str) -> OutboundMessage:
        return build_message(
            notification,
            message_id=message_id,
            helo_domain=notification.envelope_sender().rpartition("@")[2],
            max_bytes=self._settings.max_message_bytes,
        )

    def _queue(
        self, prepared: Sequence[tuple[Notification, str, OutboundMessage]], settled: set[str]
    ) -> list[str]:
        """Write one slice of prepared notifications; returns their ids in order."""
        holders = self._claim_keys([(n.idempotency_key, fresh) for n, fresh, _ in prepared])
        fresh_ids = {fresh for _, fresh, _ in prepared}
        earlier = [
            holder
            for holder in dict.fromkeys(h for h in holders if h is not None)
            if holder not in settled and holder not in fresh_ids
        ]
        progress = dict(zip(earlier, self._status.progress(earlier), strict=True))
        ids: list[str] = []
        writes: list[_Write] = []
        for (notification, fresh_id, message), holder in zip(prepared, holders, strict=True):
            message_id = fresh_id if holder is None else holder
            if message_id not in settled and progress.get(message_id) is not True:
                if message_id == fresh_id:
                    stored: OutboundMessage | None = message
                elif progress[message_id] is None:
                    # The first producer of this key crashed before storing: store it now.
                    stored = self._build(notification, message_id)
                else:  # ... or after storing, before enqueueing: enqueue it now.
                    stored = None
                writes.append(_Write(message_id, stored, self._destinations(notification)))
            settled.add(message_id)
            ids.append(message_id)
        self._write(writes)
        return ids

    def _claim_keys(self, claims: Sequence[tuple[str | None, str]]) -> list[str | None]:
        """Take each (idempotency key, fresh id); per claim, the id that held the key before.

        None for a claim without a key, or whose key was free (now taken for its fresh id).
        """
        holders: list[str | None] = [None] * len(claims)
        keyed = [(index, key, fresh) for index, (key, fresh) in enumerate(claims) if key]
        if not keyed:
            return holders
        ttl = self._settings.idempotency_ttl
        with self._redis.pipeline(transaction=False) as pipe:
            for _, key, fresh in keyed:
                name = "mailroom:idem:" + hashlib.sha256(key.encode()).hexdigest()
                pipe.set(name, fresh, nx=True, ex=ttl)
                # Read back in the same pipeline: nothing but expiry replaces a key set NX.
                pipe.get(name)
            replies = pipe.execute()
        for (index, _, fresh), holder in zip(keyed, replies[1::2], strict=True):
            if isinstance(holder, bytes) and holder.decode() != fresh:
                holders[index] = holder.decode()
        return holders

    def _destinations(self, notification: Notification) -> dict[str, str]:
        mode = self._settings.delivery.value
        return {
            address: destination_of(address, mode) for address in notification.envelope_recipients()
        }

    def _write(self, writes: Sequence[_Write]) -> None:
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

    def _take_over(self, writes: Sequence[_Write], claim: str) -> list[_Write]:
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

    def _store(self, writes: Sequence[_Write], claim: str) -> set[str]:
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
        destinations = {write.message_id: write.destinations for write in writes}
        created: set[str] = set()
        with self._redis.pipeline(transaction=True) as pipe:
            for messages in filter(None, groups):
                self._content.put_many(messages, pipe=pipe, keep_existing=True)
                records = [(m.message_id, m.sender, destinations[m.message_id]) for m in messages]
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


@functools.cache
def default() -> Mailroom:
    """The process-wide `Mailroom`, built from the environment on first use."""
    return Mailroom(load_settings())


def notify(**fields: Any) -> str:
    """Queue one notification with the default `Mailroom`; see `Mailroom.notify`."""
    return default().notify(**fields)


def notify_many(notifications: Iterable[Mapping[str, Any] | Notification]) -> list[str]:
    """Queue many notifications with the default `Mailroom`; see `Mailroom.notify_many`."""
    return default().notify_many(notifications)
