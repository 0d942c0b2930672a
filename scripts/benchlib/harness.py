"""What the benchmark runs share: producing notifications in chunks, the workers' outcome
counters (and waiting on them), and dnsmasq's PID."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import redis

from tasks.api import Mailroom
from tests.support.dns_server import DnsServer
from workers.observe.metrics import DELIVERIES_KEY, THROTTLED_KEY


def chunks(items: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """`items` in lists of `size` (the last one shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def produce(
    mailroom: Mailroom, notifications: list[dict[str, Any]], chunk: int
) -> dict[str, float]:
    """notify_many in chunks; returns message id → time.time() when its chunk's call began."""
    enqueued: dict[str, float] = {}
    for part in chunks(notifications, chunk):
        at = time.time()
        for message_id in mailroom.notify_many(part):
            enqueued[message_id] = at
    return enqueued


def outcome_counts(client: redis.Redis) -> dict[str, int]:
    """The workers' metric counters: recipients per outcome, and deliveries throttled."""
    counts: dict[str, int] = {}
    for key, value in client.hgetall(DELIVERIES_KEY).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        outcome = name.partition("|")[0]
        counts[outcome] = counts.get(outcome, 0) + int(value)
    counts["throttled"] = sum(int(v) for v in client.hgetall(THROTTLED_KEY).values())
    return counts


def wait_delivered(client: redis.Redis, target: int, limit: float) -> bool:
    """Wait until the workers' delivered counter reaches `target`; False after `limit` s."""
    deadline = time.monotonic() + limit
    while outcome_counts(client).get("delivered", 0) < target:
        if time.monotonic() >= deadline:
            print(f"warning: delivered counter short of {target} after {limit} s", file=sys.stderr)
            return False
        time.sleep(0.02)
    return True


def dns_pid(dns: DnsServer) -> int:
    """dnsmasq's PID, from its pid file (DnsServer keeps its process private)."""
    return int((dns.workdir / "dnsmasq.pid").read_text().split()[0])
