"""Setting up the deferred-set benchmark: its deployment, a parked destination outside the
bouncing one's shard, filling the deferred set, and making entries due."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from settings import Settings
from tasks.message import build_message
from tasks.notification import Notification
from tasks.routing import shard_of
from tests.support.dns_server import DnsServer
from workers.queue.content import ContentStore
from workers.queue.deferred import DeferredSet
from workers.queue.status import StatusStore

SENDER = "bench@example.test"
BOUNCING = "nullmx.test"  # MX 0 . in the test zone: every delivery bounces without a connection
SHARDS = 4
_DAY = 86400


def deployment(redis_url: str, dns: DnsServer) -> dict[str, Any]:
    """The settings of the benchmark deployment, as Settings keyword arguments."""
    return {
        "redis_url": redis_url,
        "shards": SHARDS,
        "mx_port": 2525,  # never dialled: every destination here has a null MX or no due entry
        "dns_nameservers": f"{dns.address[0]}:{dns.address[1]}",
        "helo_name": "bench.mailroom.test",
        "connect_timeout": 2,
        "command_timeout": 5,
        "data_timeout": 5,
        "session_timeout": 10,
        "dns_timeout": 2,
        "visibility_timeout": 60,
        "retry_delays": "60",
    }


def parked_destination() -> str:
    """A destination whose shard is not nullmx.test's: the worker leaves its queue alone."""
    bouncing = shard_of(BOUNCING, SHARDS)
    for n in range(100):
        name = f"later{n}.test"
        if shard_of(name, SHARDS) != bouncing:
            return name
    raise RuntimeError("no destination found outside nullmx.test's shard")


@dataclass(frozen=True)
class Fill:
    """`total` deliveries deferred until `due`: the first `real` whole messages to BOUNCING, the
    others bare entries to `parked`."""

    total: int
    real: int
    parked: str
    due: float


def fill(client: redis.Redis, settings: Settings, plan: Fill) -> list[str]:
    """Defer the deliveries `plan` describes; returns the ids of the real ones (the others have
    no status record)."""
    total, real, parked, due = plan.total, plan.real, plan.parked, plan.due
    ttl = settings.max_age + _DAY
    real_ids = []
    pipe = client.pipeline(transaction=False)
    deferred, content, status = DeferredSet(pipe), ContentStore(pipe, ttl), StatusStore(pipe, ttl)
    now = time.time()
    for n in range(total):
        message_id = uuid.uuid4().hex
        if n < real:
            address = f"user{n}@{BOUNCING}"
            fields = {"sender": SENDER, "to": [address], "subject": f"deferred {n}", "text": "x"}
            message = build_message(
                Notification.validate_dict(fields),
                message_id=message_id,
                helo_domain="example.test",
                max_bytes=settings.max_message_bytes,
            )
            content.put(message, pipe=pipe)
            status.create(message_id, SENDER, {address: BOUNCING}, now, pipe=pipe)
            deferred.defer(message_id, BOUNCING, 1, due)
            real_ids.append(message_id)
        else:
            deferred.defer(message_id, parked, 2, due)
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    return real_ids


def make_due(client: redis.Redis, ids: list[str], now: float) -> None:
    """Reschedule the deferred deliveries of `ids` (to BOUNCING, attempt 1) to `now`."""
    pipe = client.pipeline(transaction=False)
    deferred = DeferredSet(pipe)
    for message_id in ids:
        deferred.defer(message_id, BOUNCING, 1, now)
    pipe.execute()
