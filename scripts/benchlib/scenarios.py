"""What the cpu and latency scenarios send, where, and the deployment that sends it.

cpu       one destination (bench.test → 127.0.0.2), the sink answers at once
latency   200 destinations (d0..d199.test → 127.0.0.3, one sink process), each reply 50 ms late
Every notification is a typical one: a sender, one recipient, a subject and about 2 KB of text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from benchlib.workers import WorkerSpec
from benchlib.zones import (
    CPU_DOMAIN,
    CPU_HOST,
    LATENCY_HOST,
    cpu_zone,
    latency_domains,
    latency_zone,
)
from tests.support.dns_server import DnsServer, Zone

SENDER = "Bench Shop <noreply@shop.bench.test>"
SENDER_DOMAIN = "shop.bench.test"
LATENCY_DESTINATIONS = 200
LATENCY_DELAY = 0.05
_PARAGRAPH = (
    "Your order has shipped and is on its way. You can follow the parcel on our web site and "
    "reply to this message with any question you may have about it.\n\n"
)


@dataclass(frozen=True)
class Options:
    """How the benchmark deployment is shaped (the command line's knobs)."""

    workers: int = 2
    concurrency: int = 8
    shards: int = 8
    split: bool = False  # each worker its own range of shards, instead of all of them
    max_connections: int = 64
    chunk: int = 500
    rate: float | None = None
    redis_sample: int = 2000
    loglevel: str = "info"
    dkim: str | None = None  # "rsa" or "ed25519": the producer signs every message (DKIM_KEYS)
    events: str = "on"  # "off" (EVENTS_MAXLEN=0), "on" (the log only) or "webhook" (one endpoint)


@dataclass(frozen=True)
class Scenario:
    """Where the mail goes and how the far end answers."""

    name: str
    zone: Zone
    sink_host: str
    delay: float
    domains: tuple[str, ...]

    def notification(self, n: int, tag: str) -> dict[str, Any]:
        """The n-th notification: about 2 KB of text to one recipient, `{tag}{n}@{domain}`."""
        domain = self.domains[n % len(self.domains)]
        return {
            "sender": SENDER,
            "to": [f"{tag}{n}@{domain}"],
            "subject": f"Your order #{n} has shipped",
            "text": f"Hello customer {n},\n\n" + _PARAGRAPH * 13,
        }


def scenario(name: str) -> Scenario:
    """The cpu or the latency scenario."""
    if name == "cpu":
        return Scenario("cpu", cpu_zone(), CPU_HOST, 0.0, (CPU_DOMAIN,))
    if name == "latency":
        zone = latency_zone(LATENCY_DESTINATIONS)
        domains = tuple(latency_domains(LATENCY_DESTINATIONS))
        return Scenario("latency", zone, LATENCY_HOST, LATENCY_DELAY, domains)
    raise ValueError(f"no throughput scenario {name!r}")


def deployment(options: Options, redis_url: str, dns: DnsServer, port: int) -> dict[str, Any]:
    """Settings of the benchmark deployment, as Settings keyword arguments (and MAILROOM_*)."""
    return {
        "redis_url": redis_url,
        "shards": options.shards,
        "mx_port": port,
        "dns_nameservers": f"{dns.address[0]}:{dns.address[1]}",
        "helo_name": "bench.mailroom.test",
        "max_connections": json.dumps({"*": options.max_connections}),
        "retry_delays": "2",  # a delivery that fails comes back soon, and shows as slowness
        "connect_timeout": 10,
        "command_timeout": 30,
        "data_timeout": 60,
        "session_timeout": 120,
        "dns_timeout": 5,
        "visibility_timeout": 300,
        "log_level": options.loglevel,
    }


def worker_specs(options: Options) -> list[WorkerSpec]:
    """`workers` processes; with `split` each takes its own range of the shards."""
    if not options.split:
        return [WorkerSpec(None, options.concurrency) for _ in range(options.workers)]
    specs = []
    for number in range(options.workers):
        first = number * options.shards // options.workers
        last = (number + 1) * options.shards // options.workers - 1
        specs.append(WorkerSpec(f"{first}-{last}", options.concurrency))
    return specs
