"""The one place Redis clients are built: bounded waits, TCP keepalive, a short retry policy.

A Redis that stops answering (paused, partitioned, a half-open connection after a failover) must
never block a task thread, the sweeper, the CLI or the submission listener for ever. Every
client therefore gets a connect and a socket timeout (`MAILROOM_REDIS_TIMEOUT`), TCP keepalive
(redis-py's defaults: idle 30 s, 3 probes 5 s apart) and a health check of connections idle for
a while. redis-py retries a command that timed out or lost its connection; its default (ten
retries) would stretch one stalled command to about a minute, so here it retries twice, with
jittered exponential backoff, and then the caller gets the error as it is.

Celery's broker connections (kombu's Redis transport) get the same bounds through
`broker_transport_options`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

RETRIES = 2  # a stalled command costs at most three timeouts and two short pauses
_BACKOFF_BASE = 0.05  # seconds before the first retry (jittered, doubling)
_BACKOFF_CAP = 1.0  # seconds between retries at most
HEALTH_CHECK_INTERVAL = 15  # seconds idle after which a pooled connection is PINGed before use
# kombu's BRPOP waits up to 1 s for a task; a shorter socket timeout would cut every idle poll.
_BROKER_MIN_TIMEOUT = 2.0


def redis_client(url: str, timeout: float) -> redis.Redis:
    """A client of the Redis at `url` whose connects and replies each wait `timeout` s at most."""
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": Retry(ExponentialWithJitterBackoff(base=_BACKOFF_BASE, cap=_BACKOFF_CAP), RETRIES),
    }
    if urlsplit(url).scheme != "unix":  # a Unix socket has no TCP keepalive (redis-py refuses it)
        options["socket_keepalive"] = True
    return redis.Redis.from_url(url, **options)


def broker_transport_options(timeout: float) -> dict[str, Any]:
    """kombu Redis transport options giving the broker's connections the same bounds."""
    bounded = max(timeout, _BROKER_MIN_TIMEOUT)
    return {
        "socket_connect_timeout": bounded,
        "socket_timeout": bounded,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }
