"""`mailroom exporter` as a real process: Prometheus text at /metrics, read from Redis per scrape.

The exporter runs as `python -m tasks.cli exporter` on a free loopback port against the test
Redis; the test scrapes it with urllib, parses the text with prometheus_client's own parser, and
stops it by PID with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from settings import Settings
from settings.parsing import Rate
from tasks.api import Mailroom
from tasks.routing import INTAKE_QUEUE, all_shard_queues, shard_of
from tests.support.redis_server import RedisServer, RedisServerFactory
from tests.tasks.test_cli import REPO, run_mailroom
from workers.model.reply import Reply, Step
from workers.model.report import Attempt, DeliveryReport, StepRecord
from workers.model.states import RecipientState
from workers.model.throttling import Granted
from workers.observe.metrics import DESTINATIONS_KEY, MetricsRecorder
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.status import StatusStore
from workers.queue.suppression import Entry, SuppressionList
from workers.traffic.rate_limits import Limiter

SHARDS = 3
_START_TIMEOUT = 15.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Exporter:
    process: subprocess.Popen[str]
    url: str

    def scrape(self) -> Samples:
        """Every sample of one scrape, keyed by (sample name, labels)."""
        with urllib.request.urlopen(self.url, timeout=5) as response:
            assert response.status == 200
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@contextmanager
def running_exporter(redis_url: str, cwd: Path) -> Iterator[Exporter]:
    """A running `mailroom exporter` on a free loopback port; stopped by PID afterwards."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "MAILROOM_REDIS_URL": redis_url,
        "MAILROOM_SHARDS": str(SHARDS),
        "MAILROOM_METRICS_LISTEN": f"127.0.0.1:{port}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "exporter"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Exporter(process, f"http://127.0.0.1:{port}/metrics")
    try:
        _wait_until_serving(running)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.fixture
def exporter(redis_server: RedisServer, tmp_path: Path) -> Iterator[Exporter]:
    """The exporter on the session's Redis."""
    with running_exporter(redis_server.url, tmp_path) as running:
        yield running


def _wait_until_serving(exporter: Exporter) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if exporter.process.poll() is not None:
            _, stderr = exporter.process.communicate()
            pytest.fail(f"mailroom exporter exited {exporter.process.returncode}: {stderr}")
        try:
            urllib.request.urlopen(exporter.url, timeout=1).close()
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    pytest.fail(f"mailroom exporter did not serve {exporter.url} within {_START_TIMEOUT} s")


def _session(ms: float) -> Attempt:
    steps = (
        StepRecord("connect", Reply(220, "", "ready", Step.OPEN_SESSION), ms / 2),
        StepRecord("RCPT TO", Reply(451, "4.7.1", "greylisted", Step.RCPT_TO), ms / 2),
    )
    return Attempt(datetime.now(UTC), "mx.x.test", "127.0.0.2", steps)


def _labels(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def _reply(reply_class: str, step: str) -> frozenset[tuple[str, str]]:
    return frozenset({("class", reply_class), ("step", step)})


def test_metrics_reflect_redis_at_each_scrape(
    exporter: Exporter, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    before = exporter.scrape()
    assert before[("mailroom_deferred", _labels())] == 0
    assert before[("mailroom_messages_enqueued_total", _labels())] == 0
    assert before[("mailroom_oldest_deferred_seconds", _labels())] == 0
    assert not [name for name, _ in before if name == "mailroom_destination_held"]
    assert before[("mailroom_session_seconds_count", _labels())] == 0
    for queue in [*all_shard_queues(SHARDS), INTAKE_QUEUE]:
        assert before[("mailroom_queue_depth", _labels(queue=queue))] == 0

    settings = Settings(redis_url=redis_server.url, shards=SHARDS)
    Mailroom(settings, client=redis_client).notify(
        sender="app@example.com", to=["a@example.org"], subject="Hi", text="body"
    )
    DeferredSet(redis_client).defer("m1", "x.test", 2, time.time() + 60)
    DeferredSet(redis_client).defer("m2", "x.test", 2, time.time() + 60)
    # A deferred delivery first queued an hour ago (m1 and m2 have no status record: stale).
    StatusStore(redis_client, 7200).create(
        "m4", "a@s.test", {"c@y.test": "y.test"}, time.time() - 3600
    )
    DeferredSet(redis_client).defer("m4", "y.test", 1, time.time() + 60)
    limiter = Limiter(redis_client, rates={"z.test": Rate(1, 3600)}, connections={}, lease_ttl=60)
    assert isinstance(limiter.acquire("z.test", "m5|z.test"), Granted)
    limiter.penalize("x.test", "421 4.7.0")
    redis_client.sadd(DESTINATIONS_KEY, "z.test")  # admitted as a label, as a delivery would
    dead = [{"address": "b@x.test", "code": 550, "enhanced": "5.1.1", "reply": "unknown"}]
    DeadLetters(redis_client, 3600).add("m3", "x.test", "bounced", dead, time.time())
    SuppressionList(redis_client).add([Entry("b@x.test", "550 5.1.1 unknown", "bounce", 1.0)])
    recorder = MetricsRecorder(redis_client)
    resolved = StepRecord("resolve", Reply(250, "2.0.0", "ok", Step.RESOLVE_MX), 1.0)
    recorder.delivery(
        DeliveryReport("x.test", (), resolved, (_session(20.0), _session(2000.0))),
        {RecipientState.DEFERRED: 2, RecipientState.BOUNCED: 1, RecipientState.SUPPRESSED: 1},
    )
    recorder.delivery(
        DeliveryReport("x.test", (), resolved, ()), {RecipientState.EXPIRED: 1}, throttled=True
    )
    recorder.flush()

    after = exporter.scrape()

    busy = f"mailroom.shard.{shard_of('example.org', SHARDS)}"
    assert after[("mailroom_queue_depth", _labels(queue=busy))] == 1
    assert after[("mailroom_queue_depth", _labels(queue=INTAKE_QUEUE))] == 0
    assert after[("mailroom_deferred", _labels())] == 3
    assert after[("mailroom_messages_enqueued_total", _labels())] == 1
    assert 3600 <= after[("mailroom_oldest_deferred_seconds", _labels())] < 3600 + 60
    held = "mailroom_destination_held"
    assert {labels for name, labels in after if name == held} == {
        _labels(destination="x.test", reason="slowdown"),
        _labels(destination="z.test", reason="rate"),
    }
    assert after[("mailroom_dead_letters", _labels())] == 1
    assert after[("mailroom_suppressed_addresses", _labels())] == 1
    deliveries = "mailroom_deliveries_total"
    assert after[(deliveries, _labels(outcome="deferred", destination="x.test"))] == 2
    assert after[(deliveries, _labels(outcome="bounced", destination="x.test"))] == 1
    assert after[(deliveries, _labels(outcome="expired", destination="x.test"))] == 1
    assert after[(deliveries, _labels(outcome="suppressed", destination="x.test"))] == 1
    replies = "mailroom_smtp_replies_total"
    assert after[(replies, _reply("2xx", "open_session"))] == 2
    assert after[(replies, _reply("4xx", "rcpt_to"))] == 2
    assert after[(replies, _reply("2xx", "resolve_mx"))] == 2
    assert after[("mailroom_throttled_total", _labels(destination="x.test"))] == 1
    assert after[("mailroom_session_seconds_count", _labels())] == 2
    assert after[("mailroom_session_seconds_sum", _labels())] == pytest.approx(2.02)
    assert after[("mailroom_session_seconds_bucket", _labels(le="0.05"))] == 1
    assert after[("mailroom_session_seconds_bucket", _labels(le="1"))] == 1
    assert after[("mailroom_session_seconds_bucket", _labels(le="2.5"))] == 2
    assert after[("mailroom_session_seconds_bucket", _labels(le="+Inf"))] == 2


def test_sigterm_stops_it_cleanly(exporter: Exporter) -> None:
    os.kill(exporter.process.pid, signal.SIGTERM)

    assert exporter.process.wait(timeout=10) == 0
    with pytest.raises(urllib.error.URLError) as refused:  # nothing listens there any more
        urllib.request.urlopen(exporter.url, timeout=5)
    assert isinstance(refused.value.reason, ConnectionRefusedError)


def test_a_scrape_while_redis_is_down_is_503_and_one_line(
    make_redis_server: RedisServerFactory, tmp_path: Path
) -> None:
    server = make_redis_server()
    with running_exporter(server.url, tmp_path) as exporter:
        server.stop()
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(exporter.url, timeout=5)
        assert failed.value.code == 503
        failed.value.close()
        os.kill(exporter.process.pid, signal.SIGTERM)
        _, stderr = exporter.process.communicate(timeout=10)

    assert exporter.process.returncode == 0
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if "scrape failed" in line]
    assert "Connection refused" in line


def test_a_taken_port_is_one_line_and_exit_1(redis_server: RedisServer, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = run_mailroom(
            "exporter",
            env={
                "MAILROOM_REDIS_URL": redis_server.url,
                "MAILROOM_METRICS_LISTEN": f"127.0.0.1:{port}",
            },
            cwd=tmp_path,
        )

    assert run.status == 1, run
    [line] = run.stderr.splitlines()
    assert line.startswith(f"mailroom: exporter cannot listen on 127.0.0.1:{port}"), line
    assert "Traceback" not in run.stderr


def test_help_lists_the_exporter(tmp_path: Path) -> None:
    run = run_mailroom("--help", cwd=tmp_path)

    assert run.status == 0
    assert "exporter" in run.stdout


def test_token_requests_and_the_relay_hold_are_exported(
    exporter: Exporter, redis_client: redis.Redis
) -> None:
    from workers.observe.metrics import OAUTH_TOKENS_KEY
    from workers.traffic.relay_hold import RelayHolds

    assert exporter.scrape()[("mailroom_relay_held", _labels())] == 0
    # What the token cache counts as it asks (workers.oauth.cache), and a hold.
    redis_client.hincrby(OAUTH_TOKENS_KEY, "microsoft|issued", 3)
    redis_client.hincrby(OAUTH_TOKENS_KEY, "microsoft|refused", 1)
    RelayHolds(redis_client).hold("AUTH refused: 535 5.7.3", "grant admin consent")

    after = exporter.scrape()

    tokens = "mailroom_oauth_token_requests_total"
    assert after[(tokens, _labels(provider="microsoft", outcome="issued"))] == 3
    assert after[(tokens, _labels(provider="microsoft", outcome="refused"))] == 1
    assert after[("mailroom_relay_held", _labels())] == 1


def test_mta_sts_failures_are_exported_by_mode(
    exporter: Exporter, redis_client: redis.Redis
) -> None:
    from workers.observe.metrics import MTA_STS_KEY

    # What MetricsRecorder flushes for deliveries that fell short of a policy.
    redis_client.hincrby(MTA_STS_KEY, "testing", 2)
    redis_client.hincrby(MTA_STS_KEY, "enforce", 1)

    after = exporter.scrape()

    assert after[("mailroom_mta_sts_failures_total", _labels(mode="testing"))] == 2
    assert after[("mailroom_mta_sts_failures_total", _labels(mode="enforce"))] == 1
