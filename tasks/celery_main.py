"""`celery -A tasks.celery_main` (Flower, `celery inspect`): the worker app for the environment.

Flower's broker page lists the queues of the workers it has inspected, and before it has
inspected any, the app's own `task_queues`. It inspects workers when it starts, so a worker that
starts after Flower is missing there until someone opens its page: naming every shard queue here
keeps them all on the broker page whatever the start order. The page also shows the deferred
and dead-letter counts (`tasks.flower_broker`).
"""

import importlib.util

from kombu import Queue

from settings import load_settings
from tasks import flower_broker
from tasks.routing import INTAKE_QUEUE, all_shard_queues
from tasks.worker_app import create_app

settings = load_settings()
app = create_app(settings)
app.conf.task_queues = [Queue(name) for name in (INTAKE_QUEUE, *all_shard_queues(settings.shards))]

if importlib.util.find_spec("flower") is not None:  # `celery inspect` runs without the extra
    flower_broker.install()
