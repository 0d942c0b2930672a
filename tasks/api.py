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

import functools
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from celery import Celery

from settings import Settings, load_settings
from tasks.app import make_celery
from tasks.attachments import load_paths
from tasks.dkim.keys import SigningKey, load_signing_keys
from tasks.dkim.signer import Signer
from tasks.idempotency import claim_keys
from tasks.message import build_message
from tasks.notification import InvalidNotification, Notification
from tasks.queue_writer import SLICE, TAKEOVER_AFTER, QueueWriter, Write
from tasks.routing import destination_of
from workers.model.envelope import OutboundMessage
from workers.queue.content import ContentStore
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.redis_client import redis_client
from workers.queue.retention import retention
from workers.queue.status import StatusStore

__all__ = ["SLICE", "TAKEOVER_AFTER", "Mailroom", "default", "notify", "notify_many"]


class Mailroom:
    """The producer API bound to one deployment's settings."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        app: Celery | None = None,
        takeover_after: float = TAKEOVER_AFTER,
        signing_keys: Sequence[SigningKey] | None = None,
    ) -> None:
        """`signing_keys`: the DKIM keys, when the caller loaded them already (a worker loads
        them once at start-up); otherwise they are read here from DKIM_KEYS.

        :raises DkimKeyError: a DKIM key file is missing or unusable (a SettingsError).
        """
        if signing_keys is None:
            signing_keys = load_signing_keys(settings.dkim_keys)
        # Messages are signed once, here, when built or received; never per delivery.
        self._signer = Signer(tuple(signing_keys))
        self._settings = settings
        self._redis = client or redis_client(settings.redis_url, settings.redis_timeout)
        self._writer = QueueWriter(
            self._redis, app or make_celery(settings), settings, takeover_after=takeover_after
        )
        kept = retention(settings)
        self._content = ContentStore(self._redis, kept.content)
        self._status = StatusStore(self._redis, kept.status, events_maxlen=settings.events_maxlen)
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
        max_bytes = self._settings.max_message_bytes
        built = [_prepare(index, n, max_bytes) for index, n in enumerate(notifications)]
        prepared = [(n, fresh, self._signer.sign_message(m)) for n, fresh, m in built]
        ids: list[str] = []
        settled: set[str] = set()  # ids this call has written, or found already enqueued
        for start in range(0, len(prepared), SLICE):
            ids += self._queue(prepared[start : start + SLICE], settled)
        return ids

    def submit(
        self, message: OutboundMessage, recipients: Iterable[str], *, labels: str = ""
    ) -> str:
        """Queue a message that arrived whole (SMTP submission): sign it, store it, enqueue it.

        `recipients` are envelope addresses already checked by the caller (the SMTP listener
        validates each RCPT TO); `message.data` is delivered byte for byte, after the DKIM
        signatures of its From domain's keys unless those selectors signed it already. Returns
        the message id once the content, the status record and every delivery task are in Redis.
        `labels`: the tags and metadata JSON its events carry (`tasks.labels`).
        """
        destinations = {address: self._destination(address) for address in recipients}
        if not destinations:
            raise InvalidNotification("recipients: at least one is required")
        message = self._signer.sign_message(message)
        self._writer.write([Write(message.message_id, message, destinations, labels)])
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
        self._writer.enqueue(items)

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

    def _queue(
        self, prepared: Sequence[tuple[Notification, str, OutboundMessage]], settled: set[str]
    ) -> list[str]:
        """Write one slice of prepared notifications; returns their ids in order."""
        holders = claim_keys(
            self._redis,
            self._settings.idempotency_ttl,
            [(n.idempotency_key, fresh) for n, fresh, _ in prepared],
        )
        fresh_ids = {fresh for _, fresh, _ in prepared}
        earlier = [
            holder
            for holder in dict.fromkeys(h for h in holders if h is not None)
            if holder not in settled and holder not in fresh_ids
        ]
        progress = dict(zip(earlier, self._status.progress(earlier), strict=True))
        ids: list[str] = []
        writes: list[Write] = []
        for (notification, fresh_id, message), holder in zip(prepared, holders, strict=True):
            message_id = fresh_id if holder is None else holder
            if message_id not in settled and progress.get(message_id) is not True:
                if message_id == fresh_id:
                    stored: OutboundMessage | None = message
                elif progress[message_id] is None:
                    # The first producer of this key crashed before storing: store it now.
                    built = _build(notification, message_id, self._settings.max_message_bytes)
                    stored = self._signer.sign_message(built)
                else:  # ... or after storing, before enqueueing: enqueue it now.
                    stored = None
                destinations = self._destinations(notification)
                writes.append(Write(message_id, stored, destinations, notification.labels()))
            settled.add(message_id)
            ids.append(message_id)
        self._writer.write(writes)
        return ids

    def _destinations(self, notification: Notification) -> dict[str, str]:
        return {
            address: self._destination(address) for address in notification.envelope_recipients()
        }

    def _destination(self, address: str) -> str:
        settings = self._settings
        return destination_of(address, settings.delivery.value, settings.routes)


def _prepare(
    index: int, given: Mapping[str, Any] | Notification, max_bytes: int
) -> tuple[Notification, str, OutboundMessage]:
    """The notification validated, a fresh message id, and its message; InvalidNotification
    names the index of any but the first."""
    try:
        notification = (
            given
            if isinstance(given, Notification)
            else Notification.validate_dict(load_paths(given, max_bytes))
        )
        message_id = uuid.uuid4().hex
        return notification, message_id, _build(notification, message_id, max_bytes)
    except InvalidNotification as exc:
        if index == 0:
            raise
        raise InvalidNotification(f"notifications[{index}].{exc}") from exc


def _build(notification: Notification, message_id: str, max_bytes: int) -> OutboundMessage:
    return build_message(
        notification,
        message_id=message_id,
        helo_domain=notification.envelope_sender().rpartition("@")[2],
        max_bytes=max_bytes,
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
