"""Benchmark: what the producer costs per notification, in its own CPU and in Redis's.

Queues --count notifications per run with `Mailroom.notify_many` in chunks of --chunk (500)
against a real redis-server started here (127.0.0.1, a free port, AOF fsynced every second as
in production; stopped by PID at the end), with no worker running. Per run it measures this
process's CPU (time.process_time: validation, MIME building, Celery's task messages, the Redis
client), Redis's CPU (INFO cpu: used_cpu_user + used_cpu_sys, before and after), the Redis
commands executed (INFO stats: total_commands_processed, where Lua's redis.call count too), the
requests this process sent to Redis (redis-py's send_packed_command, which kombu's transport
uses as well: one per round trip, a pipeline or a MULTI being one) and the wall time; it prints
the median of --repeat runs per variant, after one warm-up run. Redis is emptied (FLUSHALL)
between runs.

    scripts/bench producer [--count 5000] [--chunk 500] [--repeat 5]
    PYTHONPATH=. .venv/bin/python scripts/bench_producer.py --count 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from bench_message import typical_fields
from benchlib.redis_server import PERSISTENCE, BenchRedis
from redis.connection import AbstractConnection

from settings import Settings
from tasks.api import Mailroom
from tasks.app import make_celery

_PARAGRAPH = (
    "Your order has shipped and is on its way. You can follow the parcel on our web site and "
    "reply to this message with any question you may have about it.\n\n"
)


@dataclass(frozen=True)
class Variant:
    """One kind of notification: `make(n, run)` gives the n-th one of a run."""

    name: str
    make: Callable[[int, int], dict[str, Any]]


def _typical(n: int, run: int) -> dict[str, Any]:
    # scripts/bench_message.py's typical message, with recipients of their own per notification.
    return typical_fields(
        to=[f"Alice Example <alice{run}x{n}@example.org>", f"bob{run}x{n}@example.net"],
        subject=f"Your order #{n} has shipped",
    )


def _e2e(n: int, run: int) -> dict[str, Any]:
    # scripts/bench_e2e.py's cpu scenario: about 2 KB of text to one recipient.
    return {
        "sender": "Bench Shop <noreply@shop.bench.test>",
        "to": [f"user{run}x{n}@bench.test"],
        "subject": f"Your order #{n} has shipped",
        "text": f"Hello customer {n},\n\n" + _PARAGRAPH * 13,
    }


def _keyed(n: int, run: int) -> dict[str, Any]:
    return {**_typical(n, run), "idempotency_key": f"order-{run}-{n}"}


VARIANTS = (
    Variant("typical: text+html, 2 rcpt", _typical),
    Variant("2 KB text, 1 rcpt (e2e cpu)", _e2e),
    Variant("typical + idempotency_key", _keyed),
)


@dataclass(frozen=True)
class Run:
    """One run's totals."""

    producer_cpu: float  # seconds
    redis_cpu: float  # seconds
    commands: int
    round_trips: int
    wall: float  # seconds


class RoundTrips:
    """Counts the requests this process sends to Redis, by wrapping redis-py's one way out."""

    def __init__(self) -> None:
        self.count = 0
        send = AbstractConnection.send_packed_command

        def counted(connection: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return send(connection, *args, **kwargs)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def run_once(
    mailroom: Mailroom,
    client: redis.Redis,
    trips: RoundTrips,
    plan: tuple[Variant, int, int, int],
) -> Run:
    variant, run, count, chunk = plan
    notifications = [variant.make(n, run) for n in range(count)]
    chunks = [notifications[start : start + chunk] for start in range(0, count, chunk)]
    client.flushall()
    redis_before, commands_before = redis_cpu(client), commands(client)
    trips_before = trips.count
    wall_before, cpu_before = time.perf_counter(), time.process_time()
    for part in chunks:
        mailroom.notify_many(part)
    cpu_after, wall_after = time.process_time(), time.perf_counter()
    round_trips = trips.count - trips_before
    # The INFO calls themselves count: two commands and a few µs, on every run alike.
    return Run(
        producer_cpu=cpu_after - cpu_before,
        redis_cpu=redis_cpu(client) - redis_before,
        commands=commands(client) - commands_before - 2,
        round_trips=round_trips,
        wall=wall_after - wall_before,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="notifications per run")
    parser.add_argument("--chunk", type=int, default=500, help="notifications per notify_many")
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds, all told")
    args = parser.parse_args(argv)
    if args.count < 1 or args.chunk < 1 or args.repeat < 1:
        print("bench_producer: --count, --chunk and --repeat must be at least 1", file=sys.stderr)
        return 2

    with (
        tempfile.TemporaryDirectory(prefix="bench-producer-") as workdir,
        BenchRedis(Path(workdir) / "redis") as server,
    ):
        client = server.client()
        try:
            settings = Settings(redis_url=server.url)
            mailroom = Mailroom(settings, client=client, app=make_celery(settings))
            report(mailroom, client, RoundTrips(), args)
        finally:
            client.close()
    return 0


def report(
    mailroom: Mailroom, client: redis.Redis, trips: RoundTrips, args: argparse.Namespace
) -> None:
    """Run every variant and print its line of the table."""
    deadline = time.monotonic() + args.time_limit
    print(
        f"Python {sys.version.split()[0]}, Redis with {PERSISTENCE}; {args.count} notifications "
        f"per run in chunks of {args.chunk}, {args.repeat} runs per variant, median shown\n"
    )
    header = (
        f"{'variant':<28} {'runs':>4} {'producer ms/msg':>15} "
        f"{'redis ms/msg':>12} {'sum ms/msg':>10} {'cmds/msg':>8} {'trips/chunk':>11} "
        f"{'msgs/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for variant in VARIANTS:
        run_once(mailroom, client, trips, (variant, 0, min(args.count, args.chunk), args.chunk))
        runs: list[Run] = []
        while len(runs) < args.repeat and (not runs or time.monotonic() < deadline):
            plan = (variant, len(runs) + 1, args.count, args.chunk)
            runs.append(run_once(mailroom, client, trips, plan))
        per_message = 1e3 / args.count  # ms per message, from seconds per run
        producer = statistics.median(r.producer_cpu for r in runs) * per_message
        in_redis = statistics.median(r.redis_cpu for r in runs) * per_message
        both = statistics.median(r.producer_cpu + r.redis_cpu for r in runs) * per_message
        per_command = statistics.median(r.commands for r in runs) / args.count
        chunks = -(-args.count // args.chunk)
        per_chunk = statistics.median(r.round_trips for r in runs) / chunks
        rate = args.count / statistics.median(r.wall for r in runs)
        print(
            f"{variant.name:<28} {len(runs):>4} {producer:>15.3f} {in_redis:>12.3f} "
            f"{both:>10.3f} {per_command:>8.1f} {per_chunk:>11.1f} {rate:>8.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
