"""The `deferred` scenario: worker memory stays flat with N deferred, and what moving them costs.

Deferred deliveries live in a Redis sorted set, never in worker memory (docs/contract.md: no Celery
ETA). This starts a throwaway redis-server (AOF, fsync every second) and dnsmasq on loopback and
one real `mailroom worker --concurrency 4`, samples its VmRSS every 0.5 s, through phases:

  idle      after a warm-up (a few notifications to nullmx.test bounced end to end); the
            worker's and Redis's idle CPU rate is measured here
  deferred  N deliveries deferred a day ahead, while the sweeper polls the set
  due       `due` of them (real messages to nullmx.test: null MX, they bounce without a
            connection) made due now: the sweeper moves them, the worker runs and dead-letters them
  moving    every other one made due at once: the sweeper moves them all to their shard queue,
            which this worker does not consume, so its CPU is the mover's (claim, enqueue,
            release); the mover's cost is the worker's and Redis's CPU above their idle rate,
            per delivery moved
  after     once the set is empty

Redis bytes per deferred delivery: INFO used_memory before and after the set is filled, over N
(most entries have no content or status record: they are never delivered during the run).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchlib import procstat
from benchlib.deferred_setup import (
    BOUNCING,
    SENDER,
    SHARDS,
    Fill,
    deployment,
    fill,
    make_due,
    parked_destination,
)
from benchlib.harness import outcome_counts
from benchlib.redis_server import PERSISTENCE, BenchRedis, used_memory
from benchlib.stats import mib, rounded
from benchlib.workers import Workers, WorkerSpec
from settings import Settings
from tasks.api import Mailroom
from tasks.app import make_celery
from tasks.routing import shard_of
from tests.support.dns_server import STANDARD_ZONE, DnsServer
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DEFERRED_KEY, DeferredSet

WARM_UP = 10
CONCURRENCY = 4
IDLE_SECONDS = 5.0
_DAY = 86400


def wait_until(done: Callable[[], bool], limit: float, what: str) -> None:
    """:raises RuntimeError: `done()` still false after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {limit:.0f} s waiting for {what}")
        time.sleep(0.05)


def summary(values_kib: list[int]) -> dict[str, float | None]:
    """min/median/max of RSS samples, in MiB."""
    if not values_kib:
        return {"min": None, "median": None, "max": None, "samples": 0}
    return {
        "min": rounded(mib(min(values_kib)), 1),
        "median": rounded(mib(statistics.median(values_kib)), 1),
        "max": rounded(mib(max(values_kib)), 1),
        "samples": len(values_kib),
    }


class DeferredRun:
    """One run of the scenario; `run()` returns the figures."""

    def __init__(self, total: int, due: int, sample_seconds: float) -> None:
        self.total = total
        self.due = min(due, total)
        self.sample_seconds = sample_seconds
        self.parked = parked_destination()
        parked_shard = shard_of(self.parked, SHARDS)
        self.consumed = ",".join(str(k) for k in range(SHARDS) if k != parked_shard)
        self.phases: dict[str, tuple[list[int], int]] = {}
        self.figures: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        with ExitStack() as stack:
            self._start(stack)
            self._idle()
            self._fill()
            self._bounce_due()
            self._move()
            mark = self.sampler.mark()
            time.sleep(IDLE_SECONDS)
            self._phase("after", mark)
            self.workers.check_alive()
            peak = self.sampler.peak(self.pid)
        rss = {name: summary(samples) for name, (samples, _) in self.phases.items()}
        idle, full = rss["idle"]["median"], rss["deferred"]["median"]
        figures = self.figures
        return {
            "scenario": "deferred",
            "n": self.total,
            "msgs_per_s": figures["msgs_per_s"],  # deliveries the mover moved per second
            "cpu_ms_per_msg": figures["cpu_ms_per_msg"],  # mover CPU per delivery moved
            "cpu_ms_per_msg_split": figures["cpu_ms_per_msg_split"],
            "p50_ms": None,
            "p99_ms": None,
            "worker_rss_mb": rounded(mib(peak), 1),
            "redis_bytes_per_msg": figures["redis_bytes_per_msg"],  # per deferred delivery
            "rss_growth_mb": rounded(full - idle, 1) if full is not None and idle else None,
            "rss_mb": rss,
            "deferred_count": {name: count for name, (_, count) in self.phases.items()},
            "due": self.due,
            "due_seconds": figures["due_seconds"],
            "due_throttled": figures["due_throttled"],  # times the gate deferred one of them
            "moved": figures["moved"],
            "move_seconds": figures["move_seconds"],
            "idle_cpu_ms_per_s": figures["idle_cpu_ms_per_s"],
            "fill_seconds": figures["fill_seconds"],
            "run_seconds": rounded(time.monotonic() - started, 1),
            "setup": {
                "workers": 1,
                "concurrency": CONCURRENCY,
                "shards": SHARDS,
                "worker_shards": self.consumed,
                "redis_persistence": PERSISTENCE,
            },
        }

    def _start(self, stack: ExitStack) -> None:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-deferred-")))
        server = stack.enter_context(BenchRedis(workdir / "redis"))
        (workdir / "dns").mkdir()
        dns = stack.enter_context(DnsServer(STANDARD_ZONE, workdir / "dns"))
        values = deployment(server.url, dns)
        self.settings = Settings(**values)
        self.client = server.client()
        stack.callback(self.client.close)
        app = make_celery(self.settings)
        self.mailroom = Mailroom(self.settings, client=self.client, app=app)
        self.dead = DeadLetters(self.client, self.settings.max_age + _DAY)
        self.deferred = DeferredSet(self.client)
        spec = WorkerSpec(self.consumed, CONCURRENCY)
        self.workers = stack.enter_context(Workers(values, [spec], workdir))
        self.workers.wait_ready(app)
        [self.pid] = self.workers.pids
        assert server.pid is not None
        self.redis_pid = server.pid
        self.sampler = procstat.RssSampler([self.pid]).start()
        stack.callback(self.sampler.stop)

    def _phase(self, name: str, mark: dict[int, int]) -> None:
        self.sampler.sample_now()
        self.phases[name] = (self.sampler.since(mark)[self.pid], self.deferred.count())
        print(f"[deferred] {name}: done", file=sys.stderr)

    def _cpu(self) -> tuple[float, float]:
        return procstat.cpu_seconds(self.pid), procstat.cpu_seconds(self.redis_pid)

    def _idle(self) -> None:
        """Warm up, then sample the idle worker and measure its (and Redis's) idle CPU rate."""
        warm = [
            {"sender": SENDER, "to": [f"warm{n}@{BOUNCING}"], "subject": "warm", "text": "x"}
            for n in range(WARM_UP)
        ]
        self.mailroom.notify_many(warm)
        wait_until(lambda: self.dead.count() >= WARM_UP, 60, "the warm-up to bounce")
        mark, started = self.sampler.mark(), time.monotonic()
        worker0, redis0 = self._cpu()
        time.sleep(IDLE_SECONDS)
        seconds = time.monotonic() - started
        worker1, redis1 = self._cpu()
        self.idle_rates = ((worker1 - worker0) / seconds, (redis1 - redis0) / seconds)
        self.figures["idle_cpu_ms_per_s"] = {
            "workers": rounded(self.idle_rates[0] * 1000, 2),
            "redis": rounded(self.idle_rates[1] * 1000, 2),
        }
        self._phase("idle", mark)

    def _fill(self) -> None:
        print(f"[deferred] filling the deferred set with {self.total:,}", file=sys.stderr)
        before, started = used_memory(self.client), time.monotonic()
        later = time.time() + _DAY
        self.real = fill(self.client, self.settings, Fill(self.total, self.due, self.parked, later))
        self.figures["fill_seconds"] = rounded(time.monotonic() - started, 1)
        self.figures["redis_bytes_per_msg"] = round(
            (used_memory(self.client) - before) / self.total
        )
        mark = self.sampler.mark()
        time.sleep(self.sample_seconds)
        self._phase("deferred", mark)

    def _bounce_due(self) -> None:
        mark, started = self.sampler.mark(), time.monotonic()
        throttled = outcome_counts(self.client)["throttled"]
        make_due(self.client, self.real, time.time())
        target = WARM_UP + len(self.real)
        what = f"{len(self.real):,} due to bounce"
        wait_until(lambda: self.dead.count() >= target, 120, what)
        self.figures["due_seconds"] = rounded(time.monotonic() - started, 2)
        self.figures["due_throttled"] = outcome_counts(self.client)["throttled"] - throttled
        self._phase("due", mark)

    def _move(self) -> None:
        """Make every remaining entry due at once; the mover's CPU above idle, per entry moved."""
        to_move = self.deferred.count()
        mark = self.sampler.mark()
        if to_move == 0:  # --due as large as --n: nothing is left to move
            self._phase("moving", mark)
            none = {"workers": None, "redis": None}
            self.figures.update(
                {"msgs_per_s": None, "cpu_ms_per_msg": None, "cpu_ms_per_msg_split": none}
            )
            self.figures.update({"moved": 0, "move_seconds": None})
            return
        # Every score times 0: all due at once, in one atomic command.
        self.client.zunionstore(DEFERRED_KEY, {DEFERRED_KEY: 0})
        started = time.monotonic()
        worker0, redis0 = self._cpu()
        limit = max(60.0, to_move / 500)
        wait_until(lambda: self.deferred.count() == 0, limit, "the mover")
        seconds = time.monotonic() - started
        worker1, redis1 = self._cpu()
        self._phase("moving", mark)
        worker = (worker1 - worker0 - self.idle_rates[0] * seconds) * 1000 / to_move
        redis_ms = (redis1 - redis0 - self.idle_rates[1] * seconds) * 1000 / to_move
        self.figures.update(
            {
                "msgs_per_s": rounded(to_move / seconds, 1),
                "cpu_ms_per_msg": rounded(worker + redis_ms, 4),
                "cpu_ms_per_msg_split": {
                    "workers": rounded(worker, 4),
                    "redis": rounded(redis_ms, 4),
                },
                "moved": to_move,
                "move_seconds": rounded(seconds, 2),
            }
        )
