"""Connection leases follow their connections: MAX_CONNECTIONS counts what is really open.

Under a cap of 1 on a real Limiter (Redis) and two real MX sinks, a sampler thread reads, over
and over, the connections the sinks have open and the leases in the cap's sorted set, while
deliveries move to a second MX host, reconnect after a failed RSET, and leave a connection to
close when idle. No sample may see more than the cap; whenever things settle, leases held equal
connections open (a lease goes back only after its connection closes, and is taken just before
one opens, so the two only differ for the moment in between).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
import redis

from tests.support.dns_server import DnsServer, Host, Mx, Zone
from tests.support.smtp_sink import MakeSink, Sink
from tests.workers.test_smtp_session import FAST, message
from workers.delivery.agent import DeliveryAgent
from workers.delivery.config import AgentConfig
from workers.delivery.mx import MxResolver
from workers.model.outcome import Deferred, Delivered
from workers.smtp.connection_pool import ConnectionPool
from workers.traffic.rate_limits import Limiter

DESTINATION = "lease.test"
CAP_KEY = f"mailroom:rate:conn:{DESTINATION}"
FIRST, SECOND = "127.0.0.20", "127.0.0.21"
ZONE = Zone(
    mx=(Mx(DESTINATION, f"first.{DESTINATION}", 10), Mx(DESTINATION, f"second.{DESTINATION}", 20)),
    hosts=(Host(f"first.{DESTINATION}", (FIRST,)), Host(f"second.{DESTINATION}", (SECOND,))),
)
IDLE = 1.5  # the pool's idle timeout: parked connections close that long after their last use
SETTLE = 0.5  # seconds the sinks and Redis get to agree after a step: well within IDLE


class Sampler:
    """Samples (connections open at the sinks, leases in Redis) until stopped."""

    def __init__(self, sinks: list[Sink], client: redis.Redis) -> None:
        self.sinks = sinks
        self.client = client
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        open_now = sum(not record.closed for sink in self.sinks for record in sink.sessions)
        return open_now, int(self.client.zcard(CAP_KEY))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(0.002)

    async def settled(self, count: int, within: float = SETTLE) -> tuple[int, int]:
        """The sample once it reads `count` connections and `count` leases, or the last one
        after `within` seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + within
        while (now := self.sample()) != (count, count) and loop.time() < give_up:
            await asyncio.sleep(0.01)
        return now

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def lease_dns(make_dns_server: Callable[[Zone], DnsServer]) -> DnsServer:
    return make_dns_server(ZONE)


@pytest.fixture
def agent(lease_dns: DnsServer, mx_port: int, redis_client: redis.Redis) -> DeliveryAgent:
    limiter = Limiter(redis_client, rates={}, connections={DESTINATION: 1}, lease_ttl=30)
    return DeliveryAgent(
        AgentConfig(
            resolver=MxResolver([lease_dns.address], port=mx_port, timeout=2),
            mx_port=mx_port,
            relay=None,
            helo="client.mailroom.test",
            timeouts=FAST,
        ),
        pool=ConnectionPool(max_messages=100, idle_timeout=IDLE),
        cap=limiter,
    )


async def test_leases_held_equal_connections_open_through_next_mx_rset_failure_and_idle_close(
    agent: DeliveryAgent, make_sink: MakeSink, mx_port: int, redis_client: redis.Redis
) -> None:
    # The first MX host defers every MAIL FROM (its connection stays healthy, so it is parked);
    # the second hangs up on RSET, as a server that timed a parked connection out does.
    first = make_sink(FIRST, port=mx_port, mail_from_reply="451 4.3.0 try again later")
    second = make_sink(SECOND, port=mx_port, drop_on_rset=True)
    with Sampler([first, second], redis_client) as sampler:
        try:
            # Next MX: the first host's connection is parked with the cap's one lease, so the
            # second host's connection can only open under that lease, once the first closed.
            moved = await agent.deliver(message(), DESTINATION, ["a@lease.test"])
            assert await sampler.settled(1) == (1, 1)
            # RSET fails on the parked connection: its lease covers the one that replaces it.
            again = await agent.deliver(message(), DESTINATION, ["b@lease.test"])
            assert await sampler.settled(1) == (1, 1)
            # Idle close: the connection QUITs and its lease goes back.
            assert await sampler.settled(0, within=IDLE + 5) == (0, 0)
        finally:
            await agent.close()

    assert all(isinstance(o, Delivered) for report in (moved, again) for o in report.outcomes)
    assert [record.commands for record in first.sessions] == [["EHLO", "MAIL", "QUIT"]]
    assert [record.commands for record in second.sessions] == [
        ["EHLO", "MAIL", "RCPT", "DATA", "RSET"],
        ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"],
    ]
    assert sampler.samples
    assert max(open_now for open_now, _ in sampler.samples) == 1
    assert max(leases for _, leases in sampler.samples) == 1
    assert redis_client.zcard(CAP_KEY) == 0


async def test_a_failed_rset_hands_its_lease_to_the_connection_that_replaces_it(
    agent: DeliveryAgent, make_sink: MakeSink, mx_port: int, redis_client: redis.Redis
) -> None:
    first = make_sink(FIRST, port=mx_port, drop_on_rset=True)
    try:
        with Sampler([first], redis_client) as sampler:
            await agent.deliver(message(), DESTINATION, ["a@lease.test"])
            assert await sampler.settled(1) == (1, 1)
            report = await agent.deliver(message(), DESTINATION, ["b@lease.test"])
            # The replacement is open and parked: the lease it took over is still held.
            assert await sampler.settled(1) == (1, 1)
    finally:
        await agent.close()

    assert all(isinstance(o, Delivered) for o in report.outcomes)
    # The second connection's QUIT comes when the agent closes: not this test's business.
    assert [record.commands[:4] for record in first.sessions] == [
        ["EHLO", "MAIL", "RCPT", "DATA"],
        ["EHLO", "MAIL", "RCPT", "DATA"],
    ]
    assert first.sessions[0].commands[4:] == ["RSET"]
    assert max(open_now for open_now, _ in sampler.samples) == 1


async def test_with_the_cap_full_and_nothing_idle_the_next_mx_host_is_not_dialled(
    agent: DeliveryAgent, make_sink: MakeSink, mx_port: int, redis_client: redis.Redis
) -> None:
    first = make_sink(FIRST, port=mx_port, slow_seconds=0.3)
    second = make_sink(SECOND, port=mx_port)
    pool = agent.pool
    assert pool is not None
    with Sampler([first, second], redis_client) as sampler:
        try:
            # The first host keeps "busy@" for the next MX host, and takes its time over
            # "slow-rcpt@": long enough for another delivery to queue for the connection, which
            # it gets when the first delivery parks it.
            moving = asyncio.create_task(
                agent.deliver(
                    message(), DESTINATION, ["450-busy@lease.test", "slow-rcpt@lease.test"]
                )
            )
            assert await first.wait_until_async(lambda: len(first.sessions) == 1)
            waiting = asyncio.create_task(agent.deliver(message(), DESTINATION, ["c@lease.test"]))
            moved, waited = await asyncio.gather(moving, waiting)
            assert await sampler.settled(1) == (1, 1)
        finally:
            await agent.close()

    busy, slow = moved.outcomes
    assert isinstance(busy, Deferred)
    assert busy.reply.code == 450  # the first host's reply: the cap let no second connection open
    assert isinstance(slow, Delivered)
    assert all(isinstance(o, Delivered) for o in waited.outcomes)
    assert second.sessions == []
    assert len(first.sessions) == 1
    assert max(open_now for open_now, _ in sampler.samples) == 1
