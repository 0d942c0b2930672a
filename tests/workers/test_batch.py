"""The batch runner's checks before any network traffic, against a real Redis."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import redis

from tests.support.dns_server import DnsServer
from tests.support.raw_servers import MakeSilentServer
from tests.support.redis_server import RedisServerFactory
from tests.support.smtp_sink import MakeSink
from tests.support.status import record_one
from tests.tasks.pipeline_support import wait_for
from workers.batch import BatchRunner, BatchStores, BatchTiming, Item
from workers.delivery.agent import DeliveryAgent
from workers.delivery.config import AgentConfig
from workers.delivery.mx import MxResolver
from workers.model.envelope import outbound
from workers.model.reply import Code, Reply, Step
from workers.model.report import DeliveryReport
from workers.model.states import RecipientState
from workers.queue.content import ContentStore
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.disposition import Disposition, Summary
from workers.queue.leases import Leases
from workers.queue.redis_client import redis_client
from workers.queue.retry_schedule import RetryPolicy
from workers.queue.status import StatusStore
from workers.runtime import runtime
from workers.smtp.record import Timeouts

NOW = 1_800_000_000.0


def runner(client: redis.Redis) -> BatchRunner:
    status = StatusStore(client, ttl=3600)
    deferred = DeferredSet(client)
    # The agent is never reached in these tests: any network attempt would fail them (port 9).
    agent = DeliveryAgent(
        AgentConfig(
            resolver=MxResolver([("127.0.0.1", 9)], port=9, timeout=0.2),
            mx_port=9,
            relay=None,
            helo="client.mailroom.test",
            timeouts=Timeouts(connect=0.2, command=0.2, data=0.2, session=0.5),
        )
    )
    stores = BatchStores(
        content=ContentStore(client, ttl=3600),
        status=status,
        leases=Leases(client, ttl=30),
        deferred=deferred,
        disposition=Disposition(
            status, deferred, DeadLetters(client, 3600), retry=RetryPolicy((60,), 3600)
        ),
    )
    return BatchRunner(
        agent=agent, stores=stores, submit=runtime().submit, timing=BatchTiming(clock=lambda: NOW)
    )


def test_leased_delivery_is_parked_until_the_lease_expires(redis_client: redis.Redis) -> None:
    StatusStore(redis_client, ttl=3600).create("m1", "app@x.test", {"a@one.test": "one.test"}, NOW)
    holder = Leases(redis_client, ttl=30).take("m1", "one.test")
    assert holder is not None

    assert runner(redis_client).run([Item("m1", "one.test", 1)]) == []

    entries: list[tuple[bytes, float]] = redis_client.zrange(  # type: ignore[assignment]
        "mailroom:deferred", 0, -1, withscores=True
    )
    [(member, due)] = entries
    assert member == b"m1|one.test|1"
    assert NOW + 25 < due <= NOW + 30


def test_stale_attempt_and_done_deliveries_are_skipped(redis_client: redis.Redis) -> None:
    status = StatusStore(redis_client, ttl=3600)
    status.create("m1", "app@x.test", {"a@one.test": "one.test"}, time.time())

    # attempt 2 was never scheduled: a stale or forged item does nothing and parks nothing
    assert runner(redis_client).run([Item("m1", "one.test", 2), Item("nope", "one.test", 1)]) == []
    assert redis_client.zcard("mailroom:deferred") == 0
    assert redis_client.keys("mailroom:lease:*") == []


SINK_TIMEOUTS = Timeouts(connect=1, command=2, data=3, session=5)


@dataclass(frozen=True)
class SinkOptions:
    """What a test changes in `sink_runner`'s runner."""

    disposition: Disposition | None = None
    leases: Leases | None = None
    timeouts: Timeouts = SINK_TIMEOUTS
    session_limit: float = 20


def sink_runner(
    client: redis.Redis, dns_server: DnsServer, mx_port: int, options: SinkOptions = SinkOptions()
) -> BatchRunner:
    """A runner whose agent delivers for real (implicit.test → 127.0.0.5 on `mx_port`)."""
    status = StatusStore(client, ttl=3600)
    deferred = DeferredSet(client)
    agent = DeliveryAgent(
        AgentConfig(
            resolver=MxResolver([dns_server.address], port=mx_port, timeout=2),
            mx_port=mx_port,
            relay=None,
            helo="client.mailroom.test",
            timeouts=options.timeouts,
        )
    )
    stores = BatchStores(
        content=ContentStore(client, ttl=3600),
        status=status,
        leases=options.leases or Leases(client, ttl=30),
        deferred=deferred,
        disposition=options.disposition
        or Disposition(status, deferred, DeadLetters(client, 3600), retry=RetryPolicy((60,), 3600)),
    )
    timing = BatchTiming(record_window=25, session_limit=options.session_limit)
    return BatchRunner(agent=agent, stores=stores, submit=runtime().submit, timing=timing)


def queue(client: redis.Redis, message_id: str, to: str, *, content: bool = True) -> Item:
    """A queued message of one recipient (its content stored unless told not to)."""
    StatusStore(client, ttl=3600).create(
        message_id, "app@x.test", {to: to.partition("@")[2]}, time.time()
    )
    if content:
        data = f"Message-ID: <{message_id}@x.test>\r\nSubject: {message_id}\r\n\r\nhi\r\n"
        ContentStore(client, ttl=3600).put(
            outbound(message_id, "app@x.test", data.encode(), smtputf8=False)
        )
    return Item(message_id, to.partition("@")[2], 1)


def recipient_states(client: redis.Redis, message_id: str) -> list[str]:
    view = StatusStore(client, ttl=3600).view(message_id)
    assert view is not None
    return [str(r["state"]) for r in view["recipients"]]


def test_results_redis_refuses_are_kept_and_recorded_once_it_is_back(
    make_redis_server: RedisServerFactory,
    dns_server: DnsServer,
    mx_port: int,
    make_sink: MakeSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_redis_server(appendonly=True)  # stopped and started again, data kept
    sink = make_sink("127.0.0.5", port=mx_port, slow_seconds=1.0)
    client = redis_client(server.url, timeout=0.5)
    items = [
        queue(client, "fast", "fast@implicit.test"),
        queue(client, "slow", "slow-data@implicit.test"),
    ]
    caplog.set_level(logging.WARNING, logger="workers.batch")
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(sink_runner(client, dns_server, mx_port).run, items)
        # Redis goes away while the slow session waits for its 250, the fast one recorded.
        assert sink.wait_until(lambda: any(m.reply is None for m in sink.received))
        wait_for(lambda: recipient_states(client, "fast") == ["delivered"], 5, "fast recorded")
        assert any(m.reply is None for m in sink.received)  # the slow one is still in flight
        server.stop()
        wait_for(
            lambda: batch.done() or "keeping their results" in caplog.text,
            timeout=10,
            what="the slow delivery's result refused by the stopped Redis",
        )
        server.start()
        handled = batch.result(timeout=30)

    assert sorted(str(h.summary) for h in handled) == ["1 delivered", "1 delivered"]
    assert recipient_states(client, "fast") == recipient_states(client, "slow") == ["delivered"]
    assert Counter(m.message_id for m in sink.messages) == {"<fast@x.test>": 1, "<slow@x.test>": 1}
    assert client.keys("mailroom:lease:*") == []
    assert client.zcard("mailroom:deferred") == 0
    client.close()


class _FinishedMeanwhile(Leases):
    """Leases granted just after another worker recorded the same attempt as done: that worker
    records its results, then releases the lease this one takes next."""

    def __init__(self, client: redis.Redis, finish: Callable[[], None]) -> None:
        super().__init__(client, ttl=30)
        self._finish = finish

    def take_many(self, deliveries: Sequence[tuple[str, str]]) -> list[str | None]:
        taken = super().take_many(deliveries)
        self._finish()
        return taken


def test_an_attempt_finished_elsewhere_before_the_lease_is_not_sent_again(
    redis_client: redis.Redis, dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    item = queue(redis_client, "m1", "a@implicit.test")
    status = StatusStore(redis_client, ttl=3600)
    accepted = Reply(Code.OK, "2.0.0", "queued as 1", Step.DATA)

    def finish() -> None:
        record_one(status, "m1", {"a@implicit.test": (RecipientState.DELIVERED, accepted)}, [], 2)

    leases = _FinishedMeanwhile(redis_client, finish)
    handled = sink_runner(redis_client, dns_server, mx_port, SinkOptions(leases=leases)).run([item])

    assert handled == []
    assert sink.received == []
    assert recipient_states(redis_client, "m1") == ["delivered"]
    assert redis_client.keys("mailroom:lease:*") == []
    assert redis_client.zcard("mailroom:deferred") == 0


class _BrokenFor(Disposition):
    """A disposition with a bug that shows on one message's report."""

    def __init__(self, client: redis.Redis, broken: str) -> None:
        status = StatusStore(client, ttl=3600)
        deferred = DeferredSet(client)
        super().__init__(
            status, deferred, DeadLetters(client, 3600), retry=RetryPolicy((60,), 3600)
        )
        self._broken = broken

    def apply_many(
        self, deliveries: Sequence[tuple[str, int, float, DeliveryReport]], now: float
    ) -> list[Summary]:
        if any(message_id == self._broken for message_id, *_ in deliveries):
            raise RuntimeError("a bug in recording")
        return super().apply_many(deliveries, now)


def test_a_result_that_cannot_be_applied_is_handed_back_not_left_queued(
    redis_client: redis.Redis, dns_server: DnsServer, mx_port: int
) -> None:
    # No content: both end without a session, in one group, recorded together.
    items = [
        queue(redis_client, "good", "a@implicit.test", content=False),
        queue(redis_client, "bad", "b@implicit.test", content=False),
    ]
    runner = sink_runner(
        redis_client, dns_server, mx_port, SinkOptions(disposition=_BrokenFor(redis_client, "bad"))
    )

    handled = runner.run(items)

    assert [(h.message_id, h.summary.deferred) for h in handled] == [("good", 1), ("bad", 1)]
    assert recipient_states(redis_client, "good") == ["deferred"]
    # The bad one stays queued at attempt 1, but its retry is scheduled: the sweeper moves it.
    assert recipient_states(redis_client, "bad") == ["queued"]
    entries: list[bytes] = redis_client.zrange("mailroom:deferred", 0, -1)  # type: ignore[assignment]
    members = {entry.decode() for entry in entries}
    assert members == {"good|implicit.test|2", "bad|implicit.test|1"}
    assert redis_client.keys("mailroom:lease:*") == []


def test_a_session_running_past_the_batch_limit_is_cancelled_and_deferred(
    redis_client: redis.Redis,
    dns_server: DnsServer,
    mx_port: int,
    make_silent_server: MakeSilentServer,
) -> None:
    # A server that never greets, and timeouts far beyond the batch's limit: as if a session
    # ignored its deadline, the way a bug would make it.
    make_silent_server("127.0.0.5", port=mx_port)
    item = queue(redis_client, "stuck", "a@implicit.test")
    runner = sink_runner(
        redis_client,
        dns_server,
        mx_port,
        SinkOptions(
            timeouts=Timeouts(connect=30, command=30, data=30, session=30), session_limit=0.5
        ),
    )

    with ThreadPoolExecutor(1) as pool:
        [handled] = pool.submit(runner.run, [item]).result(timeout=10)

    assert (handled.summary.deferred, handled.summary.code) == (1, "451 4.4.7")
    assert "overran its deadline" in handled.summary.last
    assert recipient_states(redis_client, "stuck") == ["deferred"]
    entries: list[bytes] = redis_client.zrange("mailroom:deferred", 0, -1)  # type: ignore[assignment]
    assert [entry.decode() for entry in entries] == ["stuck|implicit.test|2"]
    assert redis_client.keys("mailroom:lease:*") == []
