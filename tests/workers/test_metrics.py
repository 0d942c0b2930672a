"""The metrics recorder against a real Redis: outcomes, reply classes, session times, throttling,
the destination cap, and what Disposition counts for each kind of report."""

from __future__ import annotations

import logging
import random
import socket
from datetime import UTC, datetime

import pytest
import redis

from workers.model.outcome import Bounced, Deferred, Delivered, Outcome
from workers.model.reply import Reply, Step
from workers.model.report import Attempt, DeliveryReport, StepRecord
from workers.model.states import RecipientState
from workers.observe.metrics import DELIVERIES_KEY, SESSION_KEY, MetricsRecorder, read_metrics
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.disposition import Disposition
from workers.queue.retry_schedule import RetryPolicy
from workers.queue.status import StatusStore

NOW = 1_800_000_000.0
OK_DATA = Reply(250, "2.0.0", "queued", Step.DATA)
GREY = Reply(451, "4.7.1", "greylisted", Step.RCPT_TO)
UNKNOWN = Reply(550, "5.1.1", "unknown", Step.RCPT_TO)
GATE = Reply(451, "4.4.5", "throttled by Mailroom", Step.GATE)
RESOLVED = StepRecord("resolve", Reply(250, "2.0.0", "x.test -> mx", Step.RESOLVE_MX), 3.0)
ALL = {
    RecipientState.DELIVERED: 1,
    RecipientState.DEFERRED: 1,
    RecipientState.BOUNCED: 1,
}


def step(command: str, code: int, step: Step, ms: float) -> StepRecord:
    return StepRecord(command, Reply(code, "", "text", step), ms)


# One session of 30 ms (bucket 0.05) and one of 1.5 s (bucket 2.5).
FAST = (
    step("connect", 220, Step.OPEN_SESSION, 10.0),
    step("EHLO", 250, Step.OPEN_SESSION, 5.0),
    step("MAIL FROM", 250, Step.MAIL_FROM, 5.0),
    step("RCPT TO", 451, Step.RCPT_TO, 10.0),
)
SLOW = (
    step("connect", 220, Step.OPEN_SESSION, 100.0),
    step("MAIL FROM", 250, Step.MAIL_FROM, 100.0),
    step("RCPT TO", 250, Step.RCPT_TO, 100.0),
    step("RCPT TO", 550, Step.RCPT_TO, 100.0),
    step("DATA", 354, Step.DATA, 100.0),  # intermediate: not a reply class of the contract
    step("DATA", 250, Step.DATA, 1000.0),
    step("QUIT", 221, Step.QUIT, 0.0),
)


def report(
    *outcomes: Outcome,
    sessions: tuple[tuple[StepRecord, ...], ...] = (),
    destination: str = "x.test",
    resolution: StepRecord = RESOLVED,
) -> DeliveryReport:
    attempts = tuple(Attempt(datetime.now(UTC), "mx.x.test", "127.0.0.2", s) for s in sessions)
    return DeliveryReport(destination, outcomes, resolution, attempts)


def record(
    client: redis.Redis, delivered: DeliveryReport, outcomes: dict[RecipientState, int]
) -> None:
    """One recorder (one worker process) counts one delivery and flushes it."""
    recorder = MetricsRecorder(client)
    recorder.delivery(delivered, outcomes)
    recorder.flush()


def test_counts_wait_in_memory_until_flushed(redis_client: redis.Redis) -> None:
    recorder = MetricsRecorder(redis_client)
    recorder.delivery(report(sessions=(FAST,)), {RecipientState.DELIVERED: 2})
    recorder.delivery(report(sessions=(SLOW,)), {RecipientState.DELIVERED: 1})
    assert read_metrics(redis_client).deliveries == {}

    recorder.flush()
    snapshot = read_metrics(redis_client)
    assert snapshot.deliveries == {("delivered", "x.test"): 3}
    assert snapshot.session.count == 2
    recorder.flush()  # nothing new: nothing counted twice
    assert read_metrics(redis_client).deliveries == {("delivered", "x.test"): 3}


def test_one_delivery_counts_outcomes_replies_and_sessions(redis_client: redis.Redis) -> None:
    record(redis_client, report(sessions=(FAST, SLOW)), ALL)

    snapshot = read_metrics(redis_client)
    assert snapshot.deliveries == {
        ("delivered", "x.test"): 1,
        ("deferred", "x.test"): 1,
        ("bounced", "x.test"): 1,
    }
    assert snapshot.replies == {
        ("2xx", "resolve_mx"): 1,
        ("2xx", "open_session"): 3,
        ("2xx", "mail_from"): 2,
        ("4xx", "rcpt_to"): 1,
        ("2xx", "rcpt_to"): 1,
        ("5xx", "rcpt_to"): 1,
        ("2xx", "data"): 1,
        ("2xx", "quit"): 1,
    }
    session = snapshot.session
    assert dict(session.buckets) == {
        "0.05": 1,
        "0.1": 0,
        "0.25": 0,
        "0.5": 0,
        "1": 0,
        "2.5": 1,
        "5": 0,
        "10": 0,
        "30": 0,
        "60": 0,
        "120": 0,
        "300": 0,
        "+Inf": 0,
    }
    assert session.count == 2
    assert session.sum == pytest.approx(0.030 + 1.5)
    assert snapshot.throttled == {}


def test_counters_add_up_across_recorders_as_across_workers(redis_client: redis.Redis) -> None:
    done = report(Delivered("a@x.test", OK_DATA), sessions=(SLOW,))
    record(redis_client, done, {RecipientState.DELIVERED: 2})
    record(redis_client, done, {RecipientState.DELIVERED: 1})

    snapshot = read_metrics(redis_client)
    assert snapshot.deliveries == {("delivered", "x.test"): 3}
    assert snapshot.replies[("2xx", "data")] == 2
    assert snapshot.session.count == 2
    # The documented layout: one hash per metric, "outcome|destination" fields.
    assert redis_client.hget(DELIVERIES_KEY, "delivered|x.test") == b"3"
    assert redis_client.hget(SESSION_KEY, "count") == b"2"


@pytest.mark.parametrize(
    ("ms", "bucket"),
    [(0.0, "0.05"), (50.0, "0.05"), (50.1, "0.1"), (300_000.0, "300"), (300_001.0, "+Inf")],
)
def test_a_session_lands_in_the_first_bucket_at_or_above_it(
    redis_client: redis.Redis, ms: float, bucket: str
) -> None:
    session = (step("connect", 421, Step.OPEN_SESSION, ms),)
    record(redis_client, report(sessions=(session,)), {})

    histogram = read_metrics(redis_client).session
    assert [name for name, n in histogram.buckets if n] == [bucket]
    cumulative = histogram.cumulative()
    assert cumulative[-1] == ("+Inf", 1)
    assert [n for _, n in cumulative] == sorted(n for _, n in cumulative)


def test_a_failed_look_up_counts_and_a_synthetic_record_does_not(
    redis_client: redis.Redis,
) -> None:
    recorder = MetricsRecorder(redis_client)
    nxdomain = StepRecord("resolve", Reply(550, "5.1.2", "no such domain", Step.RESOLVE_MX), 2.0)
    recorder.delivery(report(resolution=nxdomain), {RecipientState.BOUNCED: 1})
    internal = StepRecord("-", Reply(451, "4.3.0", "internal error", Step.OPEN_SESSION), 0.0)
    recorder.delivery(report(resolution=internal), {RecipientState.DEFERRED: 1})
    recorder.flush()

    snapshot = read_metrics(redis_client)
    assert snapshot.replies == {("5xx", "resolve_mx"): 1}
    assert snapshot.deliveries == {("bounced", "x.test"): 1, ("deferred", "x.test"): 1}
    assert snapshot.session.count == 0


def test_destinations_past_the_cap_count_as_other(redis_client: redis.Redis) -> None:
    first = MetricsRecorder(redis_client, max_destinations=2)
    second = MetricsRecorder(redis_client, max_destinations=2)  # another worker process
    for recorder, destination in [
        (first, "a.test"),
        (second, "b.test"),
        (first, "c.test"),
        (second, "d.test"),
        (second, "a.test"),
        (first, "b.test"),
    ]:
        recorder.delivery(report(destination=destination), {RecipientState.DELIVERED: 1})
        recorder.flush()

    assert read_metrics(redis_client).deliveries == {
        ("delivered", "a.test"): 2,
        ("delivered", "b.test"): 2,
        ("delivered", "other"): 2,
    }


def test_a_redis_failure_is_logged_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    recorder = MetricsRecorder(client)

    with caplog.at_level(logging.WARNING, logger="workers.observe.metrics"):
        recorder.delivery(report(sessions=(FAST,)), ALL)

    assert "metrics of x.test not recorded" in caplog.text
    client.close()


# What Disposition counts.


def disposition(client: redis.Redis, max_age: float = 3600) -> Disposition:
    status = StatusStore(client, ttl=3600)
    status.create("m1", "app@a.test", {"a@x.test": "x.test", "b@x.test": "x.test"}, NOW)
    return Disposition(
        status,
        DeferredSet(client),
        DeadLetters(client, 3600),
        retry=RetryPolicy((60, 300), max_age, rng=random.Random(1)),
        metrics=MetricsRecorder(client),
    )


def test_disposition_counts_each_recipients_outcome(redis_client: redis.Redis) -> None:
    outcomes = (Delivered("a@x.test", OK_DATA), Bounced("b@x.test", UNKNOWN))
    applied = disposition(redis_client)
    applied.apply_many([("m1", 1, NOW, report(*outcomes, sessions=(SLOW,)))], NOW)
    applied.flush()

    snapshot = read_metrics(redis_client)
    assert snapshot.deliveries == {("delivered", "x.test"): 1, ("bounced", "x.test"): 1}
    assert snapshot.session.count == 1
    assert snapshot.throttled == {}


def test_disposition_counts_a_deferral_past_max_age_as_expired(
    redis_client: redis.Redis,
) -> None:
    outcomes = (Deferred("a@x.test", GREY), Deferred("b@x.test", GREY))
    applied = disposition(redis_client, max_age=60)
    applied.apply_many([("m1", 3, NOW, report(*outcomes, sessions=(FAST,)))], NOW + 61)
    applied.flush()

    assert read_metrics(redis_client).deliveries == {("expired", "x.test"): 2}


def test_a_throttled_delivery_counts_as_throttled_only(redis_client: redis.Redis) -> None:
    gate = StepRecord("gate", GATE, 0.0)
    throttled = report(Deferred("a@x.test", GATE, 0.4), resolution=gate)
    applied = disposition(redis_client)
    applied.apply_many([("m1", 1, NOW, throttled)], NOW)
    applied.flush()

    snapshot = read_metrics(redis_client)
    assert snapshot.throttled == {"x.test": 1}
    assert snapshot.deliveries == {}  # no attempt was made: nothing was deferred by a server
    assert snapshot.replies == {}


def test_a_throttled_delivery_past_max_age_counts_as_expired_too(
    redis_client: redis.Redis,
) -> None:
    gate = StepRecord("gate", GATE, 0.0)
    outcomes = (Deferred("a@x.test", GATE, 5.0), Deferred("b@x.test", GATE, 5.0))
    throttled = report(*outcomes, resolution=gate)
    applied = disposition(redis_client, max_age=60)
    applied.apply_many([("m1", 1, NOW, throttled)], NOW + 61)
    applied.flush()

    snapshot = read_metrics(redis_client)
    assert snapshot.throttled == {"x.test": 1}
    assert snapshot.deliveries == {("expired", "x.test"): 2}
