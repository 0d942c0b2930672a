"""The worker's Celery app: the two tasks, and the per-process engine they adapt to.

`mailroom.deliver(items)` carries `[message_id, destination, attempt]` triples of one shard and
hands them to `workers.batch.BatchRunner`, which runs their SMTP sessions concurrently on the
process's one event loop (`workers.runtime`) and records each outcome before the task returns,
hence before it is acknowledged. `mailroom.notify(**fields)` is the intake for producers that are
not Python; it runs `Mailroom.notify`. A worker bootstep runs the deferred sweeper in every worker
process and stops it on shutdown; Celery's warm shutdown (SIGTERM) lets running tasks finish,
and unstarted prefetched ones go back to the broker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.exceptions import Reject

from settings import Settings
from tasks.api import Mailroom
from tasks.app import make_celery
from tasks.notification import InvalidNotification
from tasks.routing import DELIVER_TASK, NOTIFY_TASK
from workers.batch import BatchRunner, Item
from workers.content import ContentStore, record_ttl
from workers.dead_letters import DeadLetters
from workers.deferred import DeferredSet
from workers.delivery import DeliveryAgent
from workers.disposition import Disposition
from workers.leases import Leases
from workers.metrics import MetricsRecorder
from workers.profiles import traffic
from workers.rate_limits import Limiter
from workers.runtime import runtime
from workers.status import StatusStore
from workers.sweeper import Sweeper

log = logging.getLogger(__name__)

_LEASE_MARGIN = 60.0  # seconds a lease outlives the session deadline


class WorkerContext:
    """Everything a worker process builds once from settings; rebuilt after a fork."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.app = app
        self._lock = threading.Lock()
        self._pid = -1
        self._runner: BatchRunner | None = None
        self._producer: Mailroom | None = None
        self._redis: redis.Redis | None = None

    def client(self) -> redis.Redis:
        self._ensure()
        assert self._redis is not None
        return self._redis

    def runner(self) -> BatchRunner:
        self._ensure()
        assert self._runner is not None
        return self._runner

    def producer(self) -> Mailroom:
        self._ensure()
        assert self._producer is not None
        return self._producer

    def _ensure(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            settings = self.settings
            client = redis.Redis.from_url(settings.redis_url)
            ttl = record_ttl(settings.max_age)
            status = StatusStore(client, ttl)
            deferred = DeferredSet(client)
            disposition = Disposition(
                status,
                deferred,
                DeadLetters(client, ttl),
                delays=settings.retry_delays,
                max_age=settings.max_age,
                metrics=MetricsRecorder(client),
            )
            # Above the session deadline, below the visibility timeout: a dead worker's
            # leases are gone by the time kombu hands its task to another worker, so the
            # delivery runs then instead of being parked until the lease expires.
            lease_ttl = min(
                settings.session_timeout + _LEASE_MARGIN,
                (settings.session_timeout + settings.visibility_timeout) / 2,
            )
            limits = traffic(settings)
            self._runner = BatchRunner(
                agent=DeliveryAgent.from_settings(settings),
                content=ContentStore(client, ttl),
                status=status,
                leases=Leases(client, lease_ttl),
                deferred=deferred,
                disposition=disposition,
                submit=runtime().submit,
                limiter=Limiter(
                    client,
                    rates=limits.rates,
                    connections=limits.connections,
                    lease_ttl=lease_ttl,
                ),
            )
            self._producer = Mailroom(settings, client=client, app=self.app)
            self._redis = client
            self._pid = os.getpid()


@contextlib.contextmanager
def _requeue_when_redis_fails() -> Iterator[None]:
    """Give the task back to the broker when Redis fails under it.

    Celery rejects a failed late-acknowledged task without requeueing it, which would drop its
    deliveries. A Redis error is the store's or broker's outage, not the task's fault: requeue.
    If even the requeue cannot reach Redis, the message stays unacknowledged and kombu restores
    it after the visibility timeout. Any other exception is a bug and fails the task visibly
    (Flower, the log) rather than loop as a poison message.
    """
    try:
        yield
    except redis.RedisError as exc:
        log.warning("Redis failed during a task; handing it back: %s", exc)
        raise Reject(str(exc), requeue=True) from exc


def create_app(settings: Settings) -> Celery:
    """The worker's Celery app for `settings`, tasks and sweeper included."""
    app = make_celery(settings)
    context = WorkerContext(settings, app)

    @app.task(name=DELIVER_TASK, shared=False, acks_late=True, reject_on_worker_lost=True)
    def deliver(items: Sequence[Sequence[Any]]) -> str:
        batch = [Item(str(m), str(d), int(a)) for m, d, a in items]
        with _requeue_when_redis_fails():
            lines = context.runner().run(batch)
        return "; ".join(lines)[:1000] or "nothing due"

    @app.task(name=NOTIFY_TASK, shared=False, acks_late=True, reject_on_worker_lost=True)
    def notify(**fields: Any) -> str:
        try:
            with _requeue_when_redis_fails():
                return context.producer().notify(**fields)
        except InvalidNotification as exc:
            # Retrying cannot fix bad input; say why where operators look (Flower, the log).
            log.error("mailroom.notify refused: %s", exc)
            return f"invalid: {exc}"

    class SweeperStep(bootsteps.StartStopStep):
        """Runs the deferred sweeper for as long as the worker runs."""

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.sweeper: Sweeper | None = None

        def start(self, parent: Any) -> None:
            producer = context.producer()
            # Every 0.2 s: deliveries parked for a rate slot leave on time, keeping the spacing.
            self.sweeper = Sweeper(DeferredSet(context.client()), producer.enqueue, interval=0.2)
            self.sweeper.start()

        def stop(self, parent: Any) -> None:
            if self.sweeper is not None:
                self.sweeper.stop()

        terminate = stop  # a cold shutdown (what start_worker does) calls terminate, not stop

    app.steps["worker"].add(SweeperStep)
    return app
