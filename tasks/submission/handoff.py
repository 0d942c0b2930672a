"""Handing a received message to Mailroom: in a thread, shielded from the client hanging up,
counted so a shutdown can wait for every message being queued; a failure withdraws what was
written, so the client's retry cannot make a duplicate."""

from __future__ import annotations

import asyncio
from typing import Protocol

import redis

from tasks.submission.events import log
from workers.model.envelope import OutboundMessage


class Producer(Protocol):
    """What the handler needs of `tasks.api.Mailroom`."""

    def submit(
        self, message: OutboundMessage, recipients: list[str], *, labels: str = ""
    ) -> str: ...

    def withdraw(self, message_id: str) -> bool: ...


class Handoff:
    """Queues messages through `producer`; `close` refuses more, `wait_idle` waits for the rest."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._in_flight = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def close(self) -> None:
        """Take no more messages (the listener is stopping)."""
        self.closing = True

    async def wait_idle(self) -> None:
        """Return once no message is being handed to Mailroom (for a clean shutdown)."""
        await self._idle.wait()

    async def queue(
        self, message: OutboundMessage, recipients: list[str], labels: str = ""
    ) -> bool:
        """True once `message` is queued; False when it is not (the client keeps it)."""
        self._in_flight += 1
        self._idle.clear()
        work = asyncio.ensure_future(asyncio.to_thread(self._submit, message, recipients, labels))
        work.add_done_callback(self._submitted)
        # Shielded: a client that hangs up now does not stop the thread, and a shutdown must
        # wait for it (the message may end up queued; the client, told nothing, sends it again:
        # RFC 5321 §6.1's one ambiguous case).
        return await asyncio.shield(work)

    def _submitted(self, work: asyncio.Future[bool]) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    def _submit(self, message: OutboundMessage, recipients: list[str], labels: str) -> bool:
        """Queue the message: True once it is queued, False (nothing deliverable left) if not."""
        message_id = message.message_id
        try:
            self._producer.submit(message, recipients, labels=labels)
        except Exception as exc:
            # redis.RedisError, kombu's OperationalError from Celery's publish, or a bug: the
            # client must keep the message either way, so every failure is a 451.
            if isinstance(exc, redis.RedisError) or type(exc).__module__.startswith("kombu"):
                log.warning("message %s not queued: %s", message_id, exc)
            else:
                log.exception("message %s not queued", message_id)
        else:
            return True
        try:
            # Queued after all (only the reply was lost), or cleared away for the client's retry.
            return not self._producer.withdraw(message_id)
        except redis.RedisError as exc:
            log.warning("message %s: its partial record stays: %s", message_id, exc)
            return False
