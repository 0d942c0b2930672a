"""What producers call: validate, store once, record every recipient, enqueue ids by shard.

`Mailroom(settings)` is the injectable form; `notify()` and `notify_many()` use a default instance
built from the environment on first use (as `httpx.get` wraps `httpx.Client`). Every input is
validated before anything is written, so bad input leaves nothing behind. The content is stored
once (claim check); delivery tasks carry `[message_id, destination, attempt]` only, grouped by
the destination's shard, many deliveries per task (Celery's own cost per task would otherwise cap
throughput).

Idempotency: `mailroom:idem:{sha256(key)}` → message id for IDEMPOTENCY_TTL seconds. The key is
taken first (SET NX), so two producers racing with one key get one message; the message is
marked `enqueued` last, so a producer that crashed in between and retries with the same key gets
the message enqueued again (delivery is idempotent per recipient).
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from celery import Celery

from settings import Settings, load_settings
from tasks.app import make_celery
from tasks.message import build_message
from tasks.notification import InvalidNotification, Notification
from tasks.routing import DELIVER_TASK, destination_of, shard_of, shard_queue
from workers.content import ContentStore, record_ttl
from workers.dead_letters import DeadLetters
from workers.deferred import DeferredSet
from workers.envelope import OutboundMessage
from workers.status import StatusStore

MAX_BATCH = 100  # deliveries per mailroom.deliver task


class Mailroom:
    """The producer API bound to one deployment's settings."""

    def __init__(
        self, settings: Settings, *, client: redis.Redis | None = None, app: Celery | None = None
    ) -> None:
        self._settings = settings
        self._redis = client or redis.Redis.from_url(settings.redis_url)
        self._app = app or make_celery(settings)
        ttl = record_ttl(settings.max_age)
        self._content = ContentStore(self._redis, ttl)
        self._status = StatusStore(self._redis, ttl)
        self._dead = DeadLetters(self._redis, ttl)
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
        items: list[tuple[str, str, int]] = []
        enqueued: list[str] = []
        for notification, fresh_id, message in prepared:
            existing = self._claim_key(notification, fresh_id)
            if existing is not None and self._status.is_enqueued(existing):
                ids.append(existing)
                continue
            message_id = existing or fresh_id
            destinations = self._destinations(notification)
            if not self._status.exists(message_id):
                # With an earlier id, the first producer of this key crashed before storing.
                stored = (
                    message if message_id == fresh_id else self._build(notification, message_id)
                )
                self._store(stored, destinations)
            items += [(message_id, d, 1) for d in sorted(set(destinations.values()))]
            ids.append(message_id)
            enqueued.append(message_id)
        self.enqueue(items)
        for message_id in enqueued:
            self._status.mark_enqueued(message_id)
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
        self._store(message, destinations)
        self.enqueue((message.message_id, d, 1) for d in sorted(set(destinations.values())))
        self._status.mark_enqueued(message.message_id)
        return message.message_id

    def enqueue(self, items: Iterable[tuple[str, str, int]]) -> None:
        """Put deliveries on their shard queues (the sweeper and DLQ replay use this too)."""
        batches: dict[int, list[list[Any]]] = defaultdict(list)
        for message_id, destination, attempt in items:
            batches[shard_of(destination, self._settings.shards)].append(
                [message_id, destination, attempt]
            )
        self._enqueue(batches)

    def replay(self, message_ids: Iterable[str]) -> int:
        """Put the dead deliveries of these messages back on their shard queues, with a fresh age.

        Order matters for a crash: the status record is requeued and the deliveries enqueued
        before the dead letters are removed, so a crash leaves at worst a stale DLQ entry (a
        second replay clears it), never a requeued recipient with no task.
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

    def _claim_key(self, notification: Notification, message_id: str) -> str | None:
        """Take the idempotency key for `message_id`; returns the earlier id when it was taken."""
        key = notification.idempotency_key
        if key is None:
            return None
        name = "mailroom:idem:" + hashlib.sha256(key.encode()).hexdigest()
        if self._redis.set(name, message_id, nx=True, ex=self._settings.idempotency_ttl):
            return None
        existing = self._redis.get(name)
        return existing.decode() if isinstance(existing, bytes) else message_id

    def _destinations(self, notification: Notification) -> dict[str, str]:
        mode = self._settings.delivery.value
        return {
            address: destination_of(address, mode) for address in notification.envelope_recipients()
        }

    def _store(self, message: OutboundMessage, destinations: dict[str, str]) -> None:
        """Content and status record in one transaction: both exist, or neither does."""
        with self._redis.pipeline() as pipe:
            self._content.put(message, pipe=pipe)
            self._status.create(
                message.message_id, message.sender, destinations, time.time(), pipe=pipe
            )
            pipe.execute()

    def _enqueue(self, batches: Mapping[int, list[list[Any]]]) -> None:
        for shard, items in sorted(batches.items()):
            for start in range(0, len(items), MAX_BATCH):
                self._app.send_task(
                    DELIVER_TASK, args=[items[start : start + MAX_BATCH]], queue=shard_queue(shard)
                )


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
