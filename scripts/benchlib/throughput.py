"""The cpu and latency scenarios: N notifications from a producer to the sink, timed end to end.

Order of a run, every process on loopback and stopped by PID at the end:
 1 redis-server (AOF, fsync every second), dnsmasq with the scenario's zone, the SMTP sink
 2 Redis bytes per queued message: a sample queued with no worker running (INFO used_memory
   before and after, over the sample), then FLUSHALL
 3 the `mailroom worker` processes, until each answers a remote-control ping
 4 a warm-up (one message per destination, at least 50), until the sink has them all
 5 the timed part: CPU of every process marked; this process's main thread calls notify_many
   in chunks, stamping each id with time.time() when its chunk's call begins; the sink stamps
   each 250 after DATA; done when the sink has all N and the workers' delivered counter has
   caught up (the 250 comes before the record), then CPU is marked again; Redis commands
   per message come from INFO commandstats over the same span (calls inside Lua included)
Producer CPU is the producing thread's own (getrusage(RUSAGE_THREAD)), so the progress line and the
sink reader in other threads of this process are not counted.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import procstat
from benchlib.dkim_key import dkim_keys
from benchlib.harness import chunks, dns_pid, outcome_counts, produce, wait_delivered
from benchlib.redis_server import PERSISTENCE, BenchRedis, command_calls, used_memory
from benchlib.scenarios import SENDER_DOMAIN, Options, Scenario, deployment, worker_specs
from benchlib.sink import SinkProcess
from benchlib.stats import Progress, mib, percentile, rounded
from benchlib.webhook_sink import WebhookSink
from benchlib.workers import Workers
from settings import Settings
from tasks.api import Mailroom
from tasks.app import make_celery
from tests.support.dns_server import DnsServer

_WARM_LIMIT = 60.0
_METRICS_LIMIT = 15.0  # seconds the workers get to record the last deliveries after the 250s


@dataclass
class Timed:
    """What the timed part saw: enqueue times, and the sink's view of the same ids."""

    start: float
    enqueued: dict[str, float]
    producer_cpu: float = 0.0
    producer_system: float = 0.0  # of which in the kernel (socket calls to Redis)
    produced_at: float = 0.0
    accepted: dict[str, float] | None = None
    connections_used: int = 0
    connections_opened: int = 0
    duplicates: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds per process group, timed part


class ThroughputRun:
    """One run of the cpu or latency scenario; `run()` returns the figures."""

    def __init__(self, plan: Scenario, n: int, options: Options) -> None:
        self.plan = plan
        self.n = n
        self.options = options
        self.specs = worker_specs(options)

    def _say(self, text: str) -> None:
        print(f"[{self.plan.name}] {text}", file=sys.stderr)

    def run(self) -> dict[str, Any]:
        with ExitStack() as stack:
            self._start_services(stack)
            self._say(f"Redis bytes per queued message ({self.options.redis_sample:,})")
            bytes_per_message = self._redis_bytes_per_message()
            self.client.flushall()
            self._say(f"starting {len(self.specs)} workers")
            self.workers = stack.enter_context(
                Workers(self.values, self.specs, self.workdir, self.options.loglevel)
            )
            self.workers.wait_ready(self.mailroom_app)
            self.sampler = procstat.RssSampler(self.workers.pids).start()
            stack.callback(self.sampler.stop)
            self._warm_up()
            outcomes_before = outcome_counts(self.client)
            calls_before = command_calls(self.client)
            timed = self._timed(outcomes_before.get("delivered", 0))
            calls = command_calls(self.client)
            outcomes = outcome_counts(self.client)
            self.workers.check_alive()
            peaks = [self.sampler.peak(pid) for pid in self.workers.pids]
        cpu = {**timed.cpu, "producer": timed.producer_cpu}
        outcomes = {key: value - outcomes_before.get(key, 0) for key, value in outcomes.items()}
        calls = {key: value - calls_before.get(key, 0) for key, value in calls.items()}
        figures = _figures_of(self, Measured(timed, cpu, peaks, bytes_per_message, outcomes))
        figures["redis_calls_per_msg"] = rounded(sum(calls.values()) / self.n, 2)
        top = sorted(calls.items(), key=lambda item: -item[1])[:12]
        figures["redis_calls_per_msg_top"] = {key: rounded(value / self.n, 2) for key, value in top}
        return figures

    def _start_services(self, stack: ExitStack) -> None:
        plan = self.plan
        prefix = f"bench-{plan.name}-"
        self.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
        self.redis = stack.enter_context(BenchRedis(self.workdir / "redis"))
        (self.workdir / "dns").mkdir()
        self.dns = stack.enter_context(DnsServer(plan.zone, self.workdir / "dns"))
        self.sink = stack.enter_context(
            SinkProcess(plan.sink_host, plan.delay, self.workdir / "sink.log")
        )
        self.values = deployment(self.options, self.redis.url, self.dns, self.sink.port)
        if self.options.dkim:
            self.values["dkim_keys"] = dkim_keys(self.options.dkim, SENDER_DOMAIN, self.workdir)
        if self.options.events == "off":
            self.values["events_maxlen"] = 0
        elif self.options.events == "webhook":
            hook = stack.enter_context(WebhookSink())
            self.values["webhooks"] = json.dumps([{"url": hook.url, "secret": "bench-secret"}])
        settings = Settings(**self.values)
        self.client = self.redis.client()
        stack.callback(self.client.close)
        self.mailroom_app = make_celery(settings)
        self.mailroom = Mailroom(settings, client=self.client, app=self.mailroom_app)

    def _redis_bytes_per_message(self) -> float:
        sample = self.options.redis_sample
        before = used_memory(self.client)
        notifications = [self.plan.notification(n, "size") for n in range(sample)]
        produce(self.mailroom, notifications, self.options.chunk)
        return (used_memory(self.client) - before) / sample

    def _warm_up(self) -> None:
        count = max(len(self.plan.domains), 50)
        self._say(f"warm-up: {count} messages")
        notifications = [self.plan.notification(n, "warm") for n in range(count)]
        ids = produce(self.mailroom, notifications, 100)
        if not self.sink.wait_for(ids, _WARM_LIMIT):
            self.workers.check_alive()
            got = self.sink.count(ids)
            raise RuntimeError(f"warm-up: the sink got {got} of {count} in {_WARM_LIMIT:.0f} s")
        wait_delivered(self.client, count, _METRICS_LIMIT)

    def _cpu(self) -> dict[str, float]:
        """Cumulative CPU seconds of the workers, Redis, the sink and dnsmasq now."""
        assert self.redis.pid is not None
        each = {f"worker{i}": procstat.cpu_seconds(pid) for i, pid in enumerate(self.workers.pids)}
        return {
            "workers": sum(each.values()),
            "redis": procstat.cpu_seconds(self.redis.pid),
            "sink": procstat.cpu_seconds(self.sink.pid),
            "dns": procstat.cpu_seconds(dns_pid(self.dns)),
            **each,
        }

    def _progress_line(self, timed: Timed) -> str:
        ids = dict(timed.enqueued)  # the producing thread adds to it meanwhile
        delivered = self.sink.count(ids)
        seconds = max(time.time() - timed.start, 1e-9)
        return (
            f"sent {len(ids):,}/{self.n:,}  delivered {delivered:,}/{self.n:,}  "
            f"{delivered / seconds:,.0f} msg/s  {seconds:.1f} s"
        )

    def _timed(self, delivered_before: int) -> Timed:
        notifications = [self.plan.notification(n, "user") for n in range(self.n)]
        # The harness's own objects (N notifications, the maps of ids) would make every full
        # garbage collection in the producing thread slower as N grows: a cost no real producer
        # has. Frozen objects are never scanned again.
        gc.collect()
        gc.freeze()
        limit = max(60.0, self.n / 50)
        cpu_before = self._cpu()
        timed = Timed(start=time.time(), enqueued={})
        progress = Progress(lambda: self._progress_line(timed)).start()
        before = resource.getrusage(resource.RUSAGE_THREAD)
        try:
            for part in chunks(notifications, self.options.chunk):
                at = time.time()
                for message_id in self.mailroom.notify_many(part):
                    timed.enqueued[message_id] = at
                self._pace(len(timed.enqueued), timed.start)
            after = resource.getrusage(resource.RUSAGE_THREAD)
            timed.producer_system = after.ru_stime - before.ru_stime
            timed.producer_cpu = after.ru_utime - before.ru_utime + timed.producer_system
            timed.produced_at = time.time()
            complete = self.sink.wait_for(timed.enqueued, limit)
        finally:
            progress.stop()
            gc.unfreeze()
        if not complete:
            self.workers.check_alive()
            raise RuntimeError(
                f"the sink got {self.sink.count(timed.enqueued):,} of {self.n:,} within "
                f"{limit:.0f} s; worker outcomes: {outcome_counts(self.client)}"
            )
        wait_delivered(self.client, delivered_before + self.n, _METRICS_LIMIT)
        cpu_after = self._cpu()
        timed.cpu = {key: cpu_after[key] - cpu_before[key] for key in cpu_before}
        events = self.sink.events
        with events.lock:
            timed.accepted = {i: events.accepted[i] for i in timed.enqueued}
            timed.connections_used = len({events.message_conn[i] for i in timed.enqueued})
            timed.connections_opened = sum(
                1 for at in events.connections.values() if at >= timed.start
            )
            timed.duplicates = events.duplicates
        return timed

    def _pace(self, sent: int, start: float) -> None:
        """With a rate, sleep until `sent` messages are due at that rate."""
        rate = self.options.rate
        if rate:
            ahead = start + sent / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)


@dataclass(frozen=True)
class Measured:
    """What the timed part of a run measured, for `figures`."""

    timed: Timed
    cpu: dict[str, float]
    peaks: list[int]
    bytes_per_message: float
    outcomes: dict[str, int]


def _figures_of(run: ThroughputRun, measured: Measured) -> dict[str, Any]:
    """The run's figures as `bench_e2e` reports them."""
    n, options, plan = run.n, run.options, run.plan
    timed, cpu, peaks = measured.timed, measured.cpu, measured.peaks
    bytes_per_message, outcomes = measured.bytes_per_message, measured.outcomes
    assert timed.accepted is not None
    seconds = max(timed.accepted.values()) - timed.start
    latencies = [(timed.accepted[i] - at) * 1000 for i, at in timed.enqueued.items()]
    per = {key: value * 1000 / n for key, value in cpu.items()}
    mailroom_ms = per["producer"] + per["workers"] + per["redis"]
    return {
        "scenario": plan.name,
        "n": n,
        "msgs_per_s": rounded(n / seconds, 1),
        "cpu_ms_per_msg": rounded(mailroom_ms),
        "cpu_ms_per_msg_split": {k: rounded(per[k]) for k in ("producer", "workers", "redis")},
        "producer_system_ms_per_msg": rounded(timed.producer_system * 1000 / n),
        "cpu_ms_per_msg_all": rounded(mailroom_ms + per["sink"] + per["dns"]),
        "sink_cpu_ms_per_msg": rounded(per["sink"]),
        "dns_cpu_ms_per_msg": rounded(per["dns"]),
        "p50_ms": rounded(percentile(latencies, 0.50), 1),
        "p99_ms": rounded(percentile(latencies, 0.99), 1),
        "max_ms": rounded(max(latencies), 1),
        "worker_rss_mb": rounded(mib(max(peaks)), 1),
        # How evenly the workers share the work: one busy worker is bound by its GIL.
        "worker_cpu_ms_per_msg_each": [
            rounded(per[f"worker{i}"]) for i in range(len(run.workers.pids))
        ],
        "worker_rss_mb_each": [rounded(mib(peak), 1) for peak in peaks],
        "redis_bytes_per_msg": round(bytes_per_message),
        "seconds": rounded(seconds, 2),
        "producer_msgs_per_s": rounded(n / max(timed.produced_at - timed.start, 1e-9), 1),
        "smtp_sessions": timed.connections_opened,
        "connections_used": timed.connections_used,
        "msgs_per_session": rounded(n / max(timed.connections_used, 1), 2),
        "duplicates": timed.duplicates,
        "outcomes": outcomes,
        "setup": {
            "workers": options.workers,
            "concurrency": options.concurrency,
            "shards": options.shards,
            "worker_shards": [spec.shards or "all" for spec in run.specs],
            "max_connections": options.max_connections,
            "chunk": options.chunk,
            "dkim": options.dkim,
            "events": options.events,
            "rate": options.rate,
            "sink_delay_ms": plan.delay * 1000,
            "destinations": len(plan.domains),
            "redis_persistence": PERSISTENCE,
            "worker_loglevel": options.loglevel,
            "text_bytes": len(plan.notification(0, "user")["text"]),
        },
    }
