"""The worker's Celery app: the two tasks, and the per-process engine they adapt to.

`mailroom.deliver(items)` carries `[message_id, destination, attempt]` triples of one shard and
hands them to `workers.batch.BatchRunner`, which runs their SMTP sessions concurrently on the
process's one event loop (`workers.runtime`) and records each outcome before the task returns,
hence before it is acknowledged. `mailroom.notify(**fields)` is the intake for producers that are
not Python; it runs `Mailroom.notify`. A worker bootstep runs the deferred sweeper in every worker
process and stops it on shutdown; Celery's warm shutdown (SIGTERM) lets running tasks finish,
and unstarted prefetched ones go back to the broker.

A delivery task's result is what Flower and the worker log show of it (`delivery_result`): the
batch's tally first, because Flower cuts the result column short, then each delivery's line.
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
from tasks.attachments import decode_task_attachments
from tasks.dkim.keys import SigningKey
from tasks.event_dispatch import dispatchers
from tasks.notification import InvalidNotification
from tasks.routing import DELIVER_TASK, NOTIFY_TASK
from workers.batch import BatchRunner, BatchStores, BatchTiming, Handled, Item
from workers.delivery.agent import DeliveryAgent
from workers.delivery.relay_setup import relay_access
from workers.events.dispatcher import Dispatcher
from workers.model.redaction import redact_addresses
from workers.observe.metrics import MetricsRecorder
from workers.queue.content import ContentStore
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.disposition import Disposition
from workers.queue.leases import Leases, lease_ttl
from workers.queue.redis_client import redis_client
from workers.queue.retention import retention
from workers.queue.retry_schedule import RetryPolicy
from workers.queue.status import StatusStore
from workers.queue.suppression import Suppression, SuppressionList
from workers.queue.sweeper import Sweeper, SweepPacing
from workers.runtime import runtime
from workers.traffic.profiles import traffic
from workers.traffic.rate_limits import Limiter
from workers.traffic.relay_hold import RelayHolds

log = logging.getLogger(__name__)

_RESULT_CHARS = 1000  # under Celery's resultrepr_maxsize (1024), so the tally is never cut
# Receivers often quote an address in their reply ("550 5.1.1 <bob@example.org>: unknown").
_QUIT_WAIT = 5.0  # seconds a stopping worker gives its parked connections' QUITs


class WorkerContext:
    """Everything a worker process builds once from settings; rebuilt after a fork."""

    def __init__(
        self, settings: Settings, app: Celery, signing_keys: Sequence[SigningKey] | None = None
    ) -> None:
        self.settings = settings
        self.app = app
        self.signing_keys = signing_keys
        self._lock = threading.Lock()
        self._pid = -1
        self._runner: BatchRunner | None = None
        self._agent: DeliveryAgent | None = None
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

    def close_connections(self) -> None:
        """QUIT the SMTP connections parked in this process (worker shutdown)."""
        with self._lock:
            agent = self._agent if self._pid == os.getpid() else None
        if agent is not None:
            try:
                runtime().run(agent.close(), timeout=_QUIT_WAIT)
            except Exception:  # shutting down: a QUIT that fails must not stop the rest
                log.warning("parked SMTP connections were not all closed cleanly", exc_info=True)

    def _ensure(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            settings = self.settings
            client = redis_client(settings.redis_url, settings.redis_timeout)
            kept = retention(settings)
            status = StatusStore(client, kept.status, events_maxlen=settings.events_maxlen)
            deferred = DeferredSet(client)
            disposition = Disposition(
                status,
                deferred,
                DeadLetters(client, kept.dead_letters),
                retry=RetryPolicy(settings.retry_delays, settings.max_age),
                metrics=MetricsRecorder(client),
            )
            ttl_of_leases = lease_ttl(settings.session_timeout, settings.visibility_timeout)
            limits = traffic(settings)
            limiter = Limiter(
                client,
                rates=limits.rates,
                connections=limits.connections,
                lease_ttl=ttl_of_leases,
            )
            access = relay_access(settings, client)
            self._agent = DeliveryAgent.from_settings(
                settings, cap=limiter, rates=limiter, access=access, client=client
            )
            stores = BatchStores(
                content=ContentStore(client, kept.content),
                status=status,
                leases=Leases(client, ttl_of_leases),
                deferred=deferred,
                disposition=disposition,
                limiter=limiter,
                # The same record the agent's RelayAccess keeps, read before the rate gate.
                holds=None if access is None else RelayHolds(client, settings.relay_probe_interval),
                suppression=Suppression(SuppressionList(client), settings.suppression_ttl),
            )
            # Between a session's deadline and its lease's expiry: first the cut-off for a
            # session that overran (a bug), then the last try to record a kept result.
            timing = BatchTiming(
                session_limit=_between(settings.session_timeout, ttl_of_leases, 0.5),
                record_window=_between(settings.session_timeout, ttl_of_leases, 0.75),
            )
            self._runner = BatchRunner(
                agent=self._agent, stores=stores, submit=runtime().submit, timing=timing
            )
            self._producer = Mailroom(
                settings, client=client, app=self.app, signing_keys=self.signing_keys
            )
            self._redis = client
            self._pid = os.getpid()


def _between(start: float, end: float, share: float) -> float:
    return start + (end - start) * share


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


def delivery_result(handled: Sequence[Handled]) -> str:
    """The result of a `mailroom.deliver` task, from what the batch runner handled.

    :returns: "nothing due" for an empty batch; else the tally of outcomes with the codes of
        the replies behind them, " | ", and one line per delivery ("<id> <destination>:
        <summary>") joined by "; ", e.g. "1 deferred (451 4.7.1) | 3f… mx.test: 1 deferred 451
        4.7.1 greylisted". Flower shows only the first forty-odd characters of a result in its
        tasks list, so the outcome leads. Addresses quoted in replies keep only their domain
        (`*@example.org`): Flower and the worker log carry ids and destinations, no personal
        data.
    """
    if not handled:
        return "nothing due"
    totals = {
        "delivered": sum(h.summary.delivered for h in handled),
        "deferred": sum(h.summary.deferred for h in handled),
        "bounced": sum(h.summary.bounced for h in handled),
        "expired": sum(h.summary.expired for h in handled),
    }
    codes = dict.fromkeys(h.summary.code for h in handled if h.summary.code)  # in order
    tally = ", ".join(f"{n} {outcome}" for outcome, n in totals.items() if n) or "no outcome"
    if codes:
        tally += f" ({', '.join(codes)})"
    text = f"{tally} | {'; '.join(str(h) for h in handled)}"
    return redact_addresses(text)[:_RESULT_CHARS]


def create_app(settings: Settings, signing_keys: Sequence[SigningKey] | None = None) -> Celery:
    """The worker's Celery app for `settings`, tasks and sweeper included.

    `signing_keys`: the DKIM keys `mailroom worker` read at start-up; without them the intake
    task's producer reads DKIM_KEYS when the worker starts.
    """
    app = make_celery(settings)
    context = WorkerContext(settings, app, signing_keys)

    @app.task(name=DELIVER_TASK, shared=False, acks_late=True, reject_on_worker_lost=True)
    def deliver(items: Sequence[Sequence[Any]]) -> str:
        batch = [Item(str(m), str(d), int(a)) for m, d, a in items]
        with _requeue_when_redis_fails():
            handled = context.runner().run(batch)
        return delivery_result(handled)

    @app.task(name=NOTIFY_TASK, shared=False, acks_late=True, reject_on_worker_lost=True)
    def notify(**fields: Any) -> str:
        try:
            with _requeue_when_redis_fails():
                return context.producer().notify(**decode_task_attachments(fields))
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
            # Once a minute it also drops dead letters past DEAD_LETTER_TTL.
            client = context.client()
            dead = DeadLetters(client, retention(context.settings).dead_letters)
            self.sweeper = Sweeper(
                DeferredSet(client),
                producer.enqueue,
                prune=dead.prune,
                pacing=SweepPacing(interval=0.2),
            )
            self.sweeper.start()

        def stop(self, parent: Any) -> None:
            if self.sweeper is not None:
                self.sweeper.stop()
            context.close_connections()

        terminate = stop  # a cold shutdown (what start_worker does) calls terminate, not stop

    running: list[Dispatcher] = []
    running_lock = threading.Lock()

    class EventsStep(bootsteps.StartStopStep):
        """Runs the event consumers (WEBHOOKS, EVENTS_TASK) for as long as the worker runs."""

        def start(self, parent: Any) -> None:
            # Kept on the shared list, so a second start cannot leave the first set running.
            with running_lock:
                if not running:
                    running.extend(dispatchers(context.settings, context.client()))
                    for dispatcher in running:
                        dispatcher.start()

        def stop(self, parent: Any) -> None:
            with running_lock:
                for dispatcher in running:
                    dispatcher.stop()
                running.clear()

        terminate = stop
        shutdown = stop

    app.steps["worker"].add(SweeperStep)
    app.steps["worker"].add(EventsStep)
    return app
