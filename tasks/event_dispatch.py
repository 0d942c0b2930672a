"""The event consumers a worker process runs: one dispatcher per webhook endpoint (WEBHOOKS) and
one for the producer's Celery task (EVENTS_TASK), each its own consumer group of the event log.

The task gets a list of event objects (docs/contract.md §4) as its one argument, on
EVENTS_QUEUE, through Mailroom's broker: the producer's Celery app consumes that queue with its
own worker. The events carry recipient addresses by design; `tasks.flower_display` hides the
task's arguments in Mailroom's Flower.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import kombu.exceptions
import redis
from celery import Celery

from settings import Settings
from tasks.app import make_celery
from workers.events.consumer import Consumer
from workers.events.dispatcher import Dispatcher, Target
from workers.events.webhook import Send, Sent, WebhookSender

_WEBHOOK_TIMEOUT = 10.0  # seconds for one POST: connect, send, and the status line


def task_group(task: str) -> str:
    """The consumer group of the events task."""
    return f"task:{task}"


def task_sender(app: Celery, task: str, queue: str) -> Send:
    """Hands a batch to the producer's task: sent once the broker took it."""

    def send(events: Sequence[dict[str, Any]]) -> Sent:
        try:
            # No publish retries: a broker that is down fails this try, and the dispatcher
            # retries with its own backoff, stoppable at shutdown.
            app.send_task(task, args=[list(events)], queue=queue, retry=False)
        except (kombu.exceptions.KombuError, redis.RedisError, OSError) as exc:
            return Sent(ok=False, status=type(exc).__name__)
        return Sent(ok=True, status="sent")

    return send


def dispatchers(settings: Settings, client: redis.Redis) -> list[Dispatcher]:
    """One (not yet started) dispatcher per configured consumer; none when nothing is. The
    events task goes through a Celery app of its own: the worker's app closes its producer
    pool while it shuts down, and a publish must never wait on that."""
    name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    ca_file = None if settings.tls_ca_file is None else str(settings.tls_ca_file)
    made = []
    for hook in settings.webhooks:
        sender = WebhookSender(hook, ca_file=ca_file, timeout=_WEBHOOK_TIMEOUT, clock=time.time)
        target = Target(hook.label, hook.events, sender)
        made.append(_dispatcher(settings, client, hook.group, name, target))
    if settings.events_task is not None:
        send = task_sender(make_celery(settings), settings.events_task, settings.events_queue)
        group = task_group(settings.events_task)
        made.append(_dispatcher(settings, client, group, name, Target(group, frozenset(), send)))
    return made


def _dispatcher(
    settings: Settings, client: redis.Redis, group: str, name: str, target: Target
) -> Dispatcher:
    consumer = Consumer(client, group, name, settings.events_claim_timeout)
    return Dispatcher(client, consumer, target, retry_for=settings.webhook_retry_for)
