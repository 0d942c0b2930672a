"""One thread per event consumer in every worker process: read a batch, hand it over, and
acknowledge it only then.

A batch that fails (the endpoint is down, answers non-2xx, times out) is tried again by the same
thread after 1 s, doubling to 60 s, and kept from other consumers meanwhile; after `retry_for`
seconds of failing it goes to the consumer's dead-letter list (`mailroom:events:dead:{group}`,
the newest 1,000 batches kept) and is acknowledged, so one broken endpoint never holds the log
up for ever. Events of types the consumer does not want are acknowledged without being sent.
Each batch's outcome is counted (`mailroom:metrics:webhooks`, consumer|ok|failed|dead). A thread
stopped mid-retry leaves its batch pending for another consumer to take over.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from workers.events.consumer import Consumer
from workers.events.webhook import Send
from workers.model.reply import printable
from workers.queue.events import event_json

log = logging.getLogger(__name__)

DELIVERIES_KEY = "mailroom:metrics:webhooks"
DEAD_PREFIX = "mailroom:events:dead:"
_DEAD_KEPT = 1000
_BATCH = 100
_BLOCK = 1.0
_FIRST_PAUSE = 1.0
_MOST_PAUSE = 60.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where one consumer's events go: its label (logs, metrics), the types it wants (empty:
    all) and how a batch is handed over."""

    label: str
    wants: frozenset[str]
    send: Send


class Dispatcher:
    """Runs one consumer's loop in a daemon thread until stopped."""

    def __init__(
        self,
        client: redis.Redis,
        consumer: Consumer,
        target: Target,
        *,
        retry_for: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._consumer = consumer
        self._target = target
        self._retry_for = retry_for
        self._clock = clock
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"events {target.label}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._consumer.ensure_group()
                while not self._stopped.is_set():
                    self.run_once()
            except redis.RedisError as exc:
                log.warning(
                    "events to %s: Redis failed (%s); again in 1 s", self._target.label, exc
                )
                self._stopped.wait(1.0)

    def run_once(self) -> bool:
        """Read one batch and deliver it (or dead-letter it); False when there was none."""
        entries = self._consumer.next_batch(_BATCH, _BLOCK)
        if not entries:
            return False
        ids = [entry_id for entry_id, _ in entries]
        events = [event_json(entry_id, fields) for entry_id, fields in entries]
        wanted = [e for e in events if not self._target.wants or e["type"] in self._target.wants]
        if wanted:
            self._deliver(ids, wanted)
        else:
            self._consumer.ack(ids)
        return True

    def _deliver(self, ids: list[object], events: list[dict[str, object]]) -> None:
        first_failure: float | None = None
        pause = _FIRST_PAUSE
        while not self._stopped.is_set():
            sent = self._target.send(events)
            if sent.ok:
                self._consumer.ack(ids)
                self._count("ok")
                return
            self._count("failed")
            now = self._clock()
            first_failure = now if first_failure is None else first_failure
            log.warning(
                "events to %s: %d events not taken (%s); again in %.0f s",
                self._target.label,
                len(events),
                printable(sent.status),
                pause,
            )
            if now - first_failure >= self._retry_for:
                self._dead(ids, events, sent.status, now)
                return
            self._stopped.wait(pause)
            self._consumer.touch(ids)
            pause = min(pause * 2, _MOST_PAUSE)

    def _dead(
        self, ids: list[object], events: list[dict[str, object]], why: str, now: float
    ) -> None:
        key = DEAD_PREFIX + self._consumer.group
        record = {"at": now, "last_status": why, "events": events}
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, json.dumps(record, separators=(",", ":")))
            pipe.ltrim(key, 0, _DEAD_KEPT - 1)
            pipe.execute()
        self._consumer.ack(ids)
        self._count("dead")
        log.error(
            "events to %s: %d events given up after %.0f s; kept in %s",
            self._target.label,
            len(events),
            self._retry_for,
            key,
        )

    def _count(self, status: str) -> None:
        try:
            self._redis.hincrby(DELIVERIES_KEY, f"{self._target.label}|{status}", 1)
        except redis.RedisError as exc:  # a count lost, never an event
            log.warning("events metrics not written: %s", exc)
