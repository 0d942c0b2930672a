"""The Celery application's configuration, shared by producers and workers.

Producers only need to publish, so this module registers no task and imports nothing of the
engine: `from tasks import notify` stays light. Workers add the tasks in `tasks.worker_app`.
Choices (ARCHITECTURE.md §7): JSON only; late acknowledgement with reject-on-worker-lost, so a
task is acknowledged only after its deliveries are recorded; prefetch of one; no result backend
(the status record is the source of truth); task events on, for Flower; the broker's visibility
timeout from MAILROOM_VISIBILITY_TIMEOUT.
"""

from __future__ import annotations

from celery import Celery

from settings import Settings
from tasks.routing import INTAKE_QUEUE
from workers.queue.redis_client import broker_transport_options


def make_celery(settings: Settings) -> Celery:
    """A configured Celery app with no tasks registered (enough to publish)."""
    app = Celery("mailroom", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue=INTAKE_QUEUE,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Bounded waits and keepalive, as every Redis client of Mailroom's own has.
            **broker_transport_options(settings.redis_timeout),
            "visibility_timeout": settings.visibility_timeout,
            # kombu scans for a dead worker's unacknowledged tasks on every 10th idle poll by
            # default (about every 100 s); every poll brings the hand-over near the timeout.
            "unacked_restore_throttle": 1,
        },
        enable_utc=True,
    )
    return app
