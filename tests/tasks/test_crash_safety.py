"""Crash safety of the queue pipeline: a worker killed mid-batch, Redis restarted, SIGTERM.

The worker is the real `mailroom worker` (`python -m tasks.cli worker`) in a subprocess of its
own process group, configured only through MAILROOM_* variables, against a redis-server of the
test's own, the session's dnsmasq (implicit.test → 127.0.0.5) and an aiosmtpd sink on
127.0.0.5 whose `slow-data@` recipient gets its 250 `SLOW` seconds after the final dot. Each
test asserts on what the sink accepted: every message exactly once.

The visibility timeout is short (6 s), so kombu hands a dead worker's unacknowledged tasks to
the next worker that starts after it (kombu scans for them when a worker starts polling).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from settings import Settings
from tasks.api import Mailroom
from tasks.routing import all_shard_queues
from tasks.worker_app import create_app
from tests.support.dns_server import DnsServer
from tests.support.redis_server import RedisServer, RedisServerFactory
from tests.support.smtp_sink import MakeSink, Sink
from tests.tasks.pipeline_support import (
    SHARDS,
    WorkerProcess,
    make_settings,
    queued_task_bodies,
    running_worker,
    wait_for,
    worker_env,
)
from workers.queue.status import StatusStore

pytestmark = pytest.mark.slow

SLOW = 1.5  # seconds the sink waits before answering a slow-data@ final dot
VISIBILITY = 6  # MAILROOM_VISIBILITY_TIMEOUT of these tests
SLOW_RCPT = "slow-data@implicit.test"
_EXIT_TIMEOUT = 20.0

# Timeouts of the test deployment; the session must end well inside the visibility timeout.
TIMEOUTS: dict[str, Any] = {
    "connect_timeout": 1,
    "command_timeout": 2,
    "data_timeout": 3,
    "session_timeout": 4,
    "visibility_timeout": VISIBILITY,
}


Worker = WorkerProcess


StartWorker = Callable[[], Worker]


@dataclass
class Deployment:
    """A test deployment: its settings, a producer, a status reader and the sink."""

    settings: Settings
    mailroom: Mailroom
    client: redis.Redis
    sink: Sink

    def notify(self, to: str, subject: str) -> str:
        """Queue one notification, in a task of its own; returns its id."""
        fields = {"sender": "app@example.test", "to": [to], "subject": subject, "text": subject}
        [message_id] = self.mailroom.notify_many([fields])
        return message_id

    def state(self, message_id: str) -> str | None:
        view = StatusStore(self.client, ttl=60).view(message_id)
        return None if view is None else str(view["state"])

    def states(self, ids: list[str]) -> dict[str, str | None]:
        return {message_id: self.state(message_id) for message_id in ids}

    def wait_delivered(self, ids: list[str], timeout: float, what: str) -> None:
        """Wait until every message is delivered; on timeout, say where the others are."""
        try:
            wait_for(
                lambda: all(state == "delivered" for state in self.states(ids).values()),
                timeout=timeout,
                what=what,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnosis(ids)}") from None

    def diagnosis(self, ids: list[str]) -> str:
        """Undelivered messages, their leases, and what the broker still holds."""
        stuck = {i: s for i, s in self.states(ids).items() if s != "delivered"}
        leases = sorted(
            (key.decode(), self.client.pttl(key))
            for key in self.client.scan_iter(match="mailroom:lease:*")
        )
        return (
            f"not delivered: {stuck}\nleases (key, ms left): {leases}\n"
            f"queued items: {sorted(queued_ids(self.client))}\n"
            f"unacked tasks: {self.client.hlen('unacked')}, deferred: "
            f"{self.client.zcard('mailroom:deferred')}"
        )


@pytest.fixture
def deployment(
    make_redis_server: RedisServerFactory, dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> Iterator[Deployment]:
    """A deployment on a redis-server of this test's own, so a killed worker leaves no trace."""
    server = make_redis_server()
    sink = make_sink("127.0.0.5", port=mx_port, slow_seconds=SLOW)
    settings = make_settings(server.url, dns_server, mx_port, **TIMEOUTS)
    client = server.client()
    try:
        yield Deployment(settings, Mailroom(settings, client=client), client, sink)
    finally:
        client.close()


@pytest.fixture
def start_worker(deployment: Deployment, tmp_path: Path) -> Iterator[StartWorker]:
    """Start `mailroom worker --concurrency 4` subprocesses; each is killed after the test.

    Their logs are printed at teardown (pytest shows them when the test failed).
    """
    workers: list[Worker] = []

    def start() -> Worker:
        log = tmp_path / f"worker{len(workers)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "tasks.cli", "worker", "--concurrency", "4"],
                cwd=tmp_path,  # Settings reads .env from the working directory: none there
                env=worker_env(deployment.settings),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(process, log)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.kill()
        for worker in workers:
            print(f"---- {worker.log.name} (pid {worker.pid}) ----")
            print(worker.log.read_text(errors="replace")[-20000:])


def header_id(message_id: str) -> str:
    """The Message-ID header Mailroom gives message `message_id` (sender at example.test)."""
    return f"<{message_id}@example.test>"


def plain_id(header: str) -> str:
    """The message id inside a Message-ID header made by `header_id`."""
    return header.removeprefix("<").partition("@")[0]


def accepted_counts(sink: Sink) -> Counter[str]:
    """How many times the sink accepted each Message-ID."""
    return Counter(message.message_id or "" for message in sink.messages)


def wait_for_quiet_kill_point(deployment: Deployment, in_flight: int, timeout: float) -> set[str]:
    """Wait for a moment when a SIGKILL cannot make an ambiguous delivery; return what is in flight.

    That moment: some slow message was already accepted, every message the sink accepted is
    recorded delivered (a 250 the worker had not recorded yet would be sent again: the one
    documented at-least-once case), and exactly `in_flight` slow messages wait for their reply,
    all of them first seen less than a third of `SLOW` ago, so none is about to be answered.
    With every task thread waiting on one of them, no other session can start meanwhile.
    """
    first_seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        received = deployment.sink.received
        waiting = {m.message_id or "" for m in received if m.reply is None}
        slow = {m.message_id or "" for m in received if m.rcpt_tos == (SLOW_RCPT,)}
        accepted = {m.message_id or "" for m in received if m.accepted}
        for header in waiting:
            first_seen.setdefault(header, now)
        if (
            accepted & slow
            and len(waiting) == in_flight
            and waiting <= slow
            and all(now - first_seen[header] < SLOW / 3 for header in waiting)
            and all(deployment.state(plain_id(header)) == "delivered" for header in accepted)
        ):
            return waiting
        time.sleep(0.02)
    raise AssertionError(f"no quiet moment to kill the worker within {timeout} s")


def test_a_worker_killed_mid_batch_loses_nothing_and_sends_nothing_twice(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    # Ten tasks of two deliveries each, one answered at once and one slowly: with four task
    # threads, the kill hits four batches whose fast delivery is done and slow one in flight.
    ids = []
    for n in range(10):
        pair = [
            {"sender": "app@example.test", "to": [to], "subject": f"m{n}-{kind}", "text": "x"}
            for kind, to in (("fast", f"fast{n}@implicit.test"), ("slow", SLOW_RCPT))
        ]
        ids += deployment.mailroom.notify_many(pair)
    first = start_worker()

    in_flight = wait_for_quiet_kill_point(deployment, in_flight=4, timeout=30)
    first.kill()
    killed_at = time.monotonic()

    accepted_before = accepted_counts(deployment.sink)
    assert 0 < len(accepted_before) < len(ids)
    # kombu gives the dead worker's tasks to a worker that starts polling after they have been
    # unacknowledged for the visibility timeout.
    time.sleep(max(0.0, killed_at + VISIBILITY + 1 - time.monotonic()))
    start_worker()
    deployment.wait_delivered(ids, timeout=45, what="every message delivered after the restart")

    counts = accepted_counts(deployment.sink)
    assert counts == Counter({header_id(i): 1 for i in ids})
    # The slow ones cut off by the kill were redelivered, by the second worker.
    assert in_flight <= set(counts) - set(accepted_before)


def test_redis_restarted_between_enqueue_and_delivery_loses_nothing(
    make_redis_server: RedisServerFactory,
    dns_server: DnsServer,
    mx_port: int,
    make_sink: MakeSink,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    server: RedisServer = make_redis_server(appendonly=True)
    settings = make_settings(server.url, dns_server, mx_port)
    producer = server.client()
    try:
        mailroom = Mailroom(settings, client=producer)
        ids = [
            mailroom.notify(
                sender="app@example.test", to=[f"u{n}@implicit.test"], subject=f"r{n}", text="x"
            )
            for n in range(10)
        ]
    finally:
        producer.close()

    server.kill()  # SIGKILL: only what the append-only file holds survives
    server.start()

    client = server.client()
    try:
        status = StatusStore(client, ttl=60)
        assert [claim.pending for claim in status.claims([(i, "implicit.test") for i in ids])] == [
            [f"u{n}@implicit.test"] for n in range(10)
        ]
        app = create_app(settings)  # a fresh app: no connection to the server that was killed
        with running_worker(app):
            wait_for(
                lambda: all(_state(status, i) == "delivered" for i in ids),
                timeout=20,
                what="every message delivered after the Redis restart",
            )
    finally:
        client.close()
    assert accepted_counts(sink) == Counter({header_id(i): 1 for i in ids})


def _state(status: StatusStore, message_id: str) -> str | None:
    view = status.view(message_id)
    return None if view is None else str(view["state"])


def queued_ids(client: redis.Redis) -> set[str]:
    """Message ids of the delivery items waiting in the shard queues."""
    return {
        item[0]
        for queue in all_shard_queues(SHARDS)
        for task in queued_task_bodies(client, queue)
        for item in task["decoded_body"][0][0]
    }


def test_sigterm_lets_sessions_in_flight_finish_and_keeps_the_rest_queued(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    ids = [deployment.notify(SLOW_RCPT, f"t{n}") for n in range(7)]
    first = start_worker()
    wait_for(lambda: bool(deployment.sink.received), timeout=30, what="a session in flight")

    in_flight = {m.message_id or "" for m in deployment.sink.received}
    first.terminate()
    first.process.wait(timeout=_EXIT_TIMEOUT)

    assert first.process.returncode == 0
    accepted = accepted_counts(deployment.sink)
    assert in_flight <= set(accepted)
    states = deployment.states(ids)
    delivered = {i for i, state in states.items() if state == "delivered"}
    assert {header_id(i) for i in delivered} == set(accepted)
    rest = set(ids) - delivered
    assert rest, "the worker took every task: nothing left to show as queued"
    assert all(states[i] == "queued" for i in rest)
    assert queued_ids(deployment.client) == rest  # back on their queues, not held unacked

    start_worker()
    deployment.wait_delivered(ids, timeout=20, what="the rest delivered by a second worker")
    assert accepted_counts(deployment.sink) == Counter({header_id(i): 1 for i in ids})


def test_redis_frozen_mid_session_the_worker_records_once_it_answers_again(
    make_redis_server: RedisServerFactory,
    dns_server: DnsServer,
    mx_port: int,
    make_sink: MakeSink,
) -> None:
    # Redis stops answering (SIGSTOP: connections open, no replies) while a session waits for
    # its 250, and answers again (SIGCONT) after the worker's first tries to record it failed.
    sink = make_sink("127.0.0.5", port=mx_port, slow_seconds=SLOW)
    server = make_redis_server()
    settings = make_settings(server.url, dns_server, mx_port, redis_timeout=0.3, **TIMEOUTS)
    client = server.client()
    try:
        mailroom = Mailroom(settings, client=client)
        with running_worker(create_app(settings)):
            [frozen] = mailroom.notify_many(
                [{"sender": "app@example.test", "to": [SLOW_RCPT], "subject": "f", "text": "x"}]
            )
            wait_for(lambda: bool(sink.received), timeout=10, what="the slow session")
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: bool(sink.messages), timeout=10, what="the 250 given")
                time.sleep(1.0)  # the worker's first tries to record it time out meanwhile
            finally:
                os.kill(server.pid, signal.SIGCONT)
            # The worker goes on: the frozen delivery is recorded, and new mail flows.
            after = mailroom.notify(
                sender="app@example.test", to=["after@implicit.test"], subject="a", text="x"
            )
            status = StatusStore(client, ttl=60)
            wait_for(
                lambda: [_state(status, i) for i in (frozen, after)] == ["delivered"] * 2,
                timeout=20,
                what="both delivered after Redis answers again",
            )
        assert accepted_counts(sink) == Counter({header_id(frozen): 1, header_id(after): 1})
    finally:
        client.close()
