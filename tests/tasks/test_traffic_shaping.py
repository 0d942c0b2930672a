"""Traffic shaping across a cluster: real `mailroom worker` processes share one limiter in Redis.

Two `python -m tasks.cli worker --concurrency 4` subprocesses (each the leader of its own
process group, both on all four shards, so a destination's deliveries reach either process) run
against a redis-server of the test's own, the session's dnsmasq (implicit.test → 127.0.0.5,
mx.test → 127.0.0.2/.3/.4) and aiosmtpd sinks on those addresses. What is asserted is what the
sinks saw: when each connection opened and closed and when each message was accepted
(`time.monotonic()` of this process), every message exactly once; and what Redis holds.

The timing assertions are bounds the limiter must keep (no more than N in a window, no third
connection, no session before a dead worker's lease runs out), never a speed the machine must
reach: a slower machine only spaces deliveries further apart.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from settings import Settings
from tasks.api import Mailroom
from tests.support.dns_server import DnsServer
from tests.support.redis_server import RedisServerFactory
from tests.support.smtp_sink import MakeSink, Sink
from tests.tasks.pipeline_support import WorkerProcess, make_settings, wait_for, worker_env
from workers.queue.status import StatusStore

pytestmark = pytest.mark.slow

SENDER = "app@example.test"
LIMITED = "implicit.test"  # no MX record: its A record, 127.0.0.5, is the one host
OPEN_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")  # mx.test's MX hosts
CONNECTIONS_KEY = f"mailroom:rate:conn:{LIMITED}"  # workers/rate_limits.py: the lease zset
SLOWDOWN_KEY = f"mailroom:rate:slow:{LIMITED}"  # workers/rate_limits.py: the penalty, in ms
THROTTLING_REPLY = "451 4.7.0 rate limited"
# Timeouts of the test deployment. tasks/worker_app.py gives connection leases a TTL of
# min(session + 60, (session + visibility) / 2) seconds: 6 s here.
TIMEOUTS: dict[str, Any] = {
    "connect_timeout": 1,
    "command_timeout": 2,
    "data_timeout": 3,
    "session_timeout": 4,
    "visibility_timeout": 8,
}
LEASE_TTL = min(
    TIMEOUTS["session_timeout"] + 60,
    (TIMEOUTS["session_timeout"] + TIMEOUTS["visibility_timeout"]) / 2,
)
_READY_TIMEOUT = 30.0


class Worker(WorkerProcess):
    """A worker subprocess of the cluster, with what these tests read from its log."""

    def delivered(self, destination: str) -> int:
        """How many single deliveries to `destination` this worker's log shows as delivered.

        Celery logs each task's summary ("<id> <destination>: 1 delivered"); a long batch's
        summary is cut short, so this counts at least those the sweeper handed out one by one.
        """
        return self.log.read_text(errors="replace").count(f" {destination}: 1 delivered")

    def wait_ready(self) -> None:
        """Wait until Celery logs that the worker consumes (its " ready." line)."""
        wait_for(
            lambda: " ready." in self.log.read_text(errors="replace") or not self.running(),
            timeout=_READY_TIMEOUT,
            what=f"worker {self.pid} ready",
        )
        assert self.running(), f"worker {self.pid} exited with {self.process.returncode}"


@dataclass
class Cluster:
    """A test deployment: settings, a producer, a Redis client, and the workers started on it."""

    settings: Settings
    mailroom: Mailroom
    client: redis.Redis
    workdir: Path
    workers: list[Worker] = field(default_factory=list)

    def start(self, env: Mapping[str, str]) -> Worker:
        """Start one `mailroom worker --concurrency 4` with the MAILROOM_* overrides in `env`."""
        log = self.workdir / f"worker{len(self.workers)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "tasks.cli", "worker", "--concurrency", "4"],
                cwd=self.workdir,  # Settings reads .env from the working directory: none there
                env={**worker_env(self.settings), **env},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(process, log)
        self.workers.append(worker)
        return worker

    def start_ready(self, count: int, env: Mapping[str, str]) -> list[Worker]:
        """Start `count` workers and wait until each one consumes."""
        workers = [self.start(env) for _ in range(count)]
        for worker in workers:
            worker.wait_ready()
        return workers

    def status(self, message_id: str) -> dict[str, Any]:
        view = StatusStore(self.client, ttl=60).view(message_id)
        assert view is not None, f"no status record for {message_id}"
        return view

    def wait_delivered(self, ids: Iterable[str], timeout: float, what: str) -> None:
        """Wait until every message is delivered; on timeout, say which are not."""
        pending = list(ids)

        def done() -> bool:
            pending[:] = [i for i in pending if self.status(i)["state"] != "delivered"]
            return not pending

        try:
            wait_for(done, timeout=timeout, what=what)
        except AssertionError as exc:
            states = {i: self.status(i)["state"] for i in pending}
            raise AssertionError(f"{exc}\nnot delivered: {states}") from None


@pytest.fixture
def cluster(
    make_redis_server: RedisServerFactory, dns_server: DnsServer, mx_port: int, tmp_path: Path
) -> Iterator[Cluster]:
    """A deployment on a redis-server of this test's own; every worker is killed afterwards.

    The workers' logs are printed at teardown (pytest shows them when the test failed).
    """
    server = make_redis_server()
    settings = make_settings(server.url, dns_server, mx_port, **TIMEOUTS)
    client = server.client()
    deployment = Cluster(settings, Mailroom(settings, client=client), client, tmp_path)
    try:
        yield deployment
    finally:
        for worker in deployment.workers:
            worker.kill()
        for worker in deployment.workers:
            print(f"---- {worker.log.name} (pid {worker.pid}) ----")
            print(worker.log.read_text(errors="replace")[-20000:])
        client.close()


def fields(to: str, subject: str) -> dict[str, Any]:
    return {"sender": SENDER, "to": [to], "subject": subject, "text": subject}


def header_id(message_id: str) -> str:
    """The Message-ID header Mailroom gives message `message_id` (sender at example.test)."""
    return f"<{message_id}@example.test>"


def accepted_times(sinks: Iterable[Sink]) -> dict[str, list[float]]:
    """When each Message-ID was accepted, over all `sinks`."""
    times: dict[str, list[float]] = {}
    for sink in sinks:
        for message in sink.messages:
            assert message.accepted_at is not None
            times.setdefault(message.message_id or "", []).append(message.accepted_at)
    return times


def once_each(times: Mapping[str, list[float]], ids: Iterable[str]) -> list[float]:
    """The sorted acceptance times of `ids`, after checking each was accepted exactly once."""
    wanted = [header_id(i) for i in ids]
    assert Counter({h: len(times.get(h, [])) for h in wanted}) == Counter(dict.fromkeys(wanted, 1))
    return sorted(times[h][0] for h in wanted)


SESSION_JITTER = 0.1  # seconds: how much sessions' own durations may vary on a loaded machine


def most_in_window(times: list[float], width: float) -> int:
    """The most of the sorted `times` inside one closed window [t, t + width]."""
    return max(
        (sum(1 for other in times[start:] if other <= first + width))
        for start, first in enumerate(times)
    )


def lease_seconds_left(client: redis.Redis) -> float:
    """Seconds until the one connection lease of the limited destination expires (Redis clock)."""
    leases = cast(list[tuple[bytes, float]], client.zrange(CONNECTIONS_KEY, 0, -1, withscores=True))
    [(_, expiry_us)] = leases
    seconds, micros = client.time()
    return expiry_us / 1e6 - (seconds + micros / 1e6)


def attempts(cluster: Cluster, message_id: str) -> int:
    return len(cluster.status(message_id)["attempts"])


def test_a_rate_limited_destination_is_spaced_cluster_wide_while_another_flows(
    cluster: Cluster, make_sink: MakeSink, mx_port: int
) -> None:
    limited = make_sink("127.0.0.5", port=mx_port)
    unlimited = [make_sink(host, port=mx_port) for host in OPEN_HOSTS]
    workers = cluster.start_ready(2, {"MAILROOM_RATE_LIMITS": json.dumps({LIMITED: "5/s"})})

    # The limited ones one task each, so both processes gate fresh deliveries at once (a batch
    # would be gated by one process, which hands out every slot); the open ones in one batch.
    limited_ids = [
        cluster.mailroom.notify_many([fields(f"user{n}@{LIMITED}", f"limited {n}")])[0]
        for n in range(20)
    ]
    open_ids = cluster.mailroom.notify_many(
        [fields(f"user{n}@mx.test", f"open {n}") for n in range(20)]
    )
    ids = limited_ids + open_ids
    cluster.wait_delivered(ids, timeout=30, what="all 40 messages delivered")

    slow = once_each(accepted_times([limited]), limited_ids)
    fast = once_each(accepted_times(unlimited), open_ids)
    # 5/s is one every 0.2 s at the gate: a closed 1 s window can hold both ends, hence 6. The
    # sink sees the sends shifted by each session's own time (a reused connection's RSET, or a
    # new one's connect and EHLO, on a loaded machine tens of ms apart): the window is narrowed
    # by that much, never widened.
    assert most_in_window(slow, 1.0 - SESSION_JITTER) <= 6, [round(t - slow[0], 3) for t in slow]
    assert slow[-1] - slow[0] >= 3.4  # 19 intervals of 0.2 s, less the limiter's tolerances
    assert fast[-1] - fast[0] < min(2.0, slow[-1] - slow[0])
    # Waiting for a slot is no attempt: each limited message has its one real session.
    assert [attempts(cluster, i) for i in limited_ids] == [1] * 20
    # Both processes delivered to the limited destination: the limit held across them.
    assert all(worker.delivered(LIMITED) for worker in workers)


def test_a_connection_cap_holds_cluster_wide_and_is_used_in_full(
    cluster: Cluster, make_sink: MakeSink, mx_port: int
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port, slow_seconds=0.5)
    workers = cluster.start_ready(
        2, {"MAILROOM_MAX_CONNECTIONS": json.dumps({LIMITED: 2, "*": 20})}
    )

    # One task each, so both processes' eight task threads race for the two slots at once.
    ids = [
        cluster.mailroom.notify_many([fields(f"slow-data@{LIMITED}", f"capped {n}")])[0]
        for n in range(12)
    ]
    cluster.wait_delivered(ids, timeout=30, what="all 12 capped messages delivered")

    once_each(accepted_times([sink]), ids)
    # Parked connections close after CONNECTION_IDLE_TIMEOUT (5 s) with QUIT.
    assert sink.wait_until(lambda: all(s.closed for s in sink.sessions), timeout=20)
    assert sink.peak_concurrent_sessions() == 2
    assert [attempts(cluster, i) for i in ids] == [1] * 12
    # Every lease goes back once its connection has closed (idle connections get QUIT).
    wait_for(
        lambda: cluster.client.zcard(CONNECTIONS_KEY) == 0, timeout=5, what="the leases released"
    )
    # Whichever worker holds the two connections may carry every message over them (reuse);
    # the other waits for one to come free, and neither ever opens a third.
    assert sum(worker.delivered(LIMITED) for worker in workers) == 12


def test_a_killed_workers_connection_lease_is_freed_after_its_ttl(
    cluster: Cluster, make_sink: MakeSink, mx_port: int
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port, slow_seconds=2)
    env = {"MAILROOM_MAX_CONNECTIONS": json.dumps({LIMITED: 1, "*": 20})}
    first = cluster.start(env)
    ids = cluster.mailroom.notify_many(
        [fields(f"slow-data@{LIMITED}", f"leased {n}") for n in range(3)]
    )

    # Killed while its session waits for the reply to the final dot: nothing was accepted.
    wait_for(lambda: bool(sink.received), timeout=_READY_TIMEOUT, what="a session in flight")
    first.kill()
    killed_at = time.monotonic()
    assert not sink.messages
    assert cluster.client.zcard(CONNECTIONS_KEY) == 1  # the dead worker's lease
    lease_left = lease_seconds_left(cluster.client)
    lease_ends = time.monotonic() + lease_left
    assert 0 < lease_left <= LEASE_TTL

    cluster.start(env)
    cluster.wait_delivered(ids, timeout=45, what="every message delivered by the second worker")
    wait_for(
        lambda: cluster.client.zcard(CONNECTIONS_KEY) == 0, timeout=5, what="the leases released"
    )

    accepted = once_each(accepted_times([sink]), ids)
    assert accepted[0] > killed_at
    sessions = sink.sessions
    later = [s.opened_at for s in sessions if s.opened_at > killed_at]
    # The dead worker's lease kept the one slot until it expired, then the slot was free.
    assert len(later) == len(ids)
    assert min(later) >= lease_ends - 0.1, (min(later) - killed_at, lease_left)
    assert sink.peak_concurrent_sessions() == 1


def test_a_receivers_throttling_reply_slows_the_whole_destination(
    cluster: Cluster, make_sink: MakeSink, mx_port: int
) -> None:
    sink = make_sink(
        "127.0.0.5", port=mx_port, mail_from_reply=THROTTLING_REPLY, mail_from_reply_first=1
    )
    cluster.start_ready(2, {})

    [throttled] = cluster.mailroom.notify_many([fields(f"first@{LIMITED}", "throttled")])
    wait_for(
        lambda: bool(cluster.client.exists(SLOWDOWN_KEY)), timeout=10, what="the slow-down penalty"
    )
    [session] = sink.sessions
    assert [m.reply for m in session.mail_from] == [THROTTLING_REPLY]
    later = cluster.mailroom.notify_many(
        [fields(f"user{n}@{LIMITED}", f"after {n}") for n in range(4)]
    )
    cluster.wait_delivered([throttled, *later], timeout=30, what="every message delivered")

    once_each(accepted_times([sink]), [throttled, *later])
    assert cluster.client.get(SLOWDOWN_KEY) == b"1000"  # one penalty: 1 s spacing, still live
    # The throttled connection was closed, not parked for reuse.
    assert sink.sessions[0].commands[-1] == "QUIT"
    sent = sorted(m.accepted_at or 0.0 for m in sink.messages)
    assert len(sent) == 5  # the four new messages and the retry of the throttled one
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    # Unlimited, these would open together; the penalty spaces them 1 s apart (a deferred
    # slot may be taken up to one sweep, 0.2 s, late).
    assert min(gaps) >= 0.75, [round(gap, 3) for gap in gaps]
    assert attempts(cluster, throttled) == 2
    assert [attempts(cluster, i) for i in later] == [1] * 4
