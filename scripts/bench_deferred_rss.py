"""Benchmark: a worker's memory (RSS) stays flat while 100,000 deliveries wait in the deferred set.

Deferred deliveries live in a Redis sorted set, never in worker memory (DESIGN.md: no Celery
ETA). This starts a throwaway redis-server (no persistence) and dnsmasq on loopback, a real
`mailroom worker --concurrency 4` subprocess, and samples the worker's VmRSS (/proc/PID/status):

  idle       after a warm-up (a few notifications to nullmx.test bounced end to end)
  deferred   with N deliveries deferred a day ahead, while the sweeper polls the set
  due        after M of them (real messages to nullmx.test: null MX, so they bounce at once)
             are made due now: the sweeper moves them to the shard queues, the worker runs
             them and dead-letters them
  after      once they are all dead-lettered

Prints min/median/max RSS per phase and the deferred count. Bounded: every wait has a limit,
the whole run takes about a minute, and the processes it started are stopped by PID.

    PYTHONPATH=. .venv/bin/python scripts/bench_deferred_rss.py [--deferred 100000] [--due 1000]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis

from settings import Settings
from tasks.api import Mailroom
from tasks.message import build_message
from tasks.notification import Notification
from tests.support.dns_server import STANDARD_ZONE, DnsServer
from tests.support.redis_server import RedisServer
from workers.content import ContentStore
from workers.dead_letters import DeadLetters
from workers.deferred import DeferredSet
from workers.status import StatusStore

REPO = Path(__file__).resolve().parents[1]
SENDER = "bench@example.test"
BOUNCING = "nullmx.test"  # MX 0 . in the test zone: every delivery bounces without a connection
FUTURE = "later.test"  # destination of the entries that are never due during the run
WARM_UP = 10
_DAY = 86400
_EXIT_TIMEOUT = 20.0


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sample(pid: int, seconds: float, every: float = 0.5) -> list[int]:
    """RSS samples (KiB) every `every` seconds for `seconds`."""
    samples = []
    deadline = time.monotonic() + seconds
    while True:
        samples.append(rss_kib(pid))
        if time.monotonic() >= deadline:
            return samples
        time.sleep(every)


def sample_until(
    pid: int, done: Callable[[], bool], limit: float, what: str, every: float = 0.5
) -> list[int]:
    """RSS samples until `done()` holds; raises after `limit` seconds."""
    samples = []
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {limit} s waiting for {what}")
        samples.append(rss_kib(pid))
        time.sleep(every)
    samples.append(rss_kib(pid))
    return samples


def deployment(redis_url: str, dns: DnsServer) -> dict[str, Any]:
    """The settings of the benchmark deployment, as Settings keyword arguments."""
    return {
        "redis_url": redis_url,
        "shards": 4,
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


@contextmanager
def worker_process(values: dict[str, Any], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`mailroom worker --concurrency 4` in its own process group; killed on exit."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    env.update({f"MAILROOM_{name.upper()}": str(value) for name, value in values.items()})
    log = workdir / "worker.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tasks.cli", "worker", "--concurrency", "4"],
            cwd=workdir,  # no .env there
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.returncode not in (0, -signal.SIGTERM):
            print(log.read_text(errors="replace")[-5000:], file=sys.stderr)


def fill(client: redis.Redis, settings: Settings, total: int, real: int, due: float) -> list[str]:
    """Defer `total` deliveries at `due`; the first `real` are whole messages to BOUNCING.

    Returns the ids of the real ones. The others have no status record: they are never due
    during the run, and the sweeper reads only due entries.
    """
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
            deferred.defer(message_id, FUTURE, 2, due)
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


def mib(kib: float) -> str:
    return f"{kib / 1024:8.1f}"


def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rss-")))
        server = stack.enter_context(RedisServer(workdir / "redis"))
        (workdir / "dns").mkdir()
        dns = stack.enter_context(DnsServer(STANDARD_ZONE, workdir / "dns"))
        values = deployment(server.url, dns)
        settings = Settings(**values)
        client = server.client()
        stack.callback(client.close)
        mailroom = Mailroom(settings, client=client)
        dead = DeadLetters(client, settings.max_age + _DAY)
        deferred = DeferredSet(client)
        worker = stack.enter_context(worker_process(values, workdir))
        pid = worker.pid
        rows: list[tuple[str, list[int], int]] = []

        warm = [
            {"sender": SENDER, "to": [f"warm{n}@{BOUNCING}"], "subject": "warm", "text": "x"}
            for n in range(WARM_UP)
        ]
        mailroom.notify_many(warm)
        sample_until(pid, lambda: dead.count() >= WARM_UP, 60, "the warm-up to bounce")
        rows.append(("idle", sample(pid, args.idle_seconds), deferred.count()))

        fill_started = time.monotonic()
        real = fill(client, settings, args.deferred, args.due, time.time() + _DAY)
        filled = time.monotonic() - fill_started
        rows.append(("deferred", sample(pid, args.sample_seconds), deferred.count()))

        make_due(client, real, time.time())
        target = WARM_UP + len(real)
        samples = sample_until(
            pid, lambda: dead.count() >= target, args.due_limit, f"{len(real)} due to bounce"
        )
        rows.append(("due", samples, deferred.count()))
        rows.append(("after", sample(pid, args.idle_seconds), deferred.count()))
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with status {worker.returncode}")

    print(
        f"worker RSS, MiB ({args.deferred:,} deferred, {args.due:,} made due; "
        f"filled in {filled:.1f} s; run {time.monotonic() - started:.0f} s)"
    )
    print(f"{'phase':<10} {'samples':>7} {'min':>8} {'median':>8} {'max':>8} {'deferred':>9}")
    for name, values_kib, count in rows:
        print(
            f"{name:<10} {len(values_kib):>7} {mib(min(values_kib))} "
            f"{mib(statistics.median(values_kib))} {mib(max(values_kib))} {count:>9,}"
        )
    idle = statistics.median(rows[0][1])
    loaded = statistics.median(rows[1][1])
    print(f"median RSS with the deferred set full minus idle: {(loaded - idle) / 1024:+.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deferred", type=int, default=100_000, help="entries deferred")
    parser.add_argument("--due", type=int, default=1_000, help="of them, made due now")
    parser.add_argument("--sample-seconds", type=float, default=20.0, help="sampling, full set")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="sampling, idle/after")
    parser.add_argument("--due-limit", type=float, default=60.0, help="most seconds for the due")
    args = parser.parse_args()
    if not 0 <= args.due <= args.deferred:
        parser.error("--due must be between 0 and --deferred")
    run(args)


if __name__ == "__main__":
    main()
