"""Connection reuse against real aiosmtpd sinks: what the server saw, session by session.

Each test runs consecutive sessions through one `ConnectionPool` and reads the sink's record of
connections and commands, so reuse (and its limits) is proven on the wire, not in the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis

from settings import Settings
from tests.support.dns_server import DnsServer
from tests.support.smtp_sink import MakeSink, Sink
from tests.support.tls_material import TlsMaterial
from tests.workers.test_smtp_session import FAST, message
from workers.delivery.agent import DeliveryAgent
from workers.delivery.config import AgentConfig
from workers.delivery.mx import MxResolver
from workers.model.envelope import OutboundMessage, outbound
from workers.model.outcome import Deferred, Delivered
from workers.model.reply import Code, Step
from workers.model.throttling import Granted
from workers.smtp.connection import PoolKey
from workers.smtp.connection_pool import ConnectionPool
from workers.smtp.peer import Credentials, Errand, Peer
from workers.smtp.record import Timeouts
from workers.smtp.session import SessionResult, run_session
from workers.smtp.tls_policy import TlsPolicy, relay_policy
from workers.traffic.rate_limits import Limiter


async def send(
    sink: Sink,
    pool: ConnectionPool | None,
    recipients: Sequence[str] = ("a@mx.test",),
    *,
    number: int = 1,
    tls: TlsPolicy | None = None,
    credentials: Credentials | None = None,
    host: str = "mx.test",
) -> SessionResult:
    deadline = asyncio.get_running_loop().time() + FAST.session
    return await run_session(
        Peer(host, sink.host, sink.port, tls, "client.mailroom.test", FAST, credentials),
        Errand(numbered(number), recipients, deadline, pool=pool),
    )


def numbered(number: int) -> OutboundMessage:
    """Message number `number`: its Subject is "n<number>", its Message-ID <m<number>@…>."""
    data = b"Subject: n%d\r\nMessage-ID: <m%d@mailroom.test>\r\n\r\nbody\r\n" % (number, number)
    return outbound(f"m{number}", "app@example.test", data, smtputf8=False)


def commands(sink: Sink) -> list[list[str]]:
    return [record.commands for record in sink.sessions]


def delivered(result: SessionResult) -> bool:
    return all(reply.code == Code.OK for reply in result.replies.values())


async def test_consecutive_messages_share_one_session_with_rset_between(
    make_sink: MakeSink, pool: ConnectionPool
) -> None:
    sink = make_sink("127.0.0.2")
    results = [await send(sink, pool, number=n) for n in (1, 2, 3)]

    assert all(delivered(result) for result in results)
    assert [m.message_id for m in sink.messages] == [f"<m{n}@mailroom.test>" for n in (1, 2, 3)]
    transaction = ["MAIL", "RCPT", "DATA"]
    assert commands(sink) == [["EHLO", *transaction, "RSET", *transaction, "RSET", *transaction]]
    assert pool.idle() == 1
    # The reused session's record starts at RSET: no connect, EHLO or handshake to pay again.
    assert [step.command for step in results[1].steps] == ["RSET", "MAIL FROM", "RCPT TO", "DATA"]


async def test_the_parked_connection_gets_quit_when_the_pool_closes(
    make_sink: MakeSink, pool: ConnectionPool
) -> None:
    sink = make_sink("127.0.0.2")
    await send(sink, pool)
    await pool.close()

    assert sink.wait_until(lambda: sink.sessions[0].closed)
    assert sink.sessions[0].commands[-1] == "QUIT"
    assert pool.idle() == 0


async def test_a_connection_carries_at_most_max_messages(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    pool = ConnectionPool(max_messages=2, idle_timeout=5)
    try:
        for n in range(1, 6):
            assert delivered(await send(sink, pool, number=n))
    finally:
        await pool.close()

    assert len(sink.messages) == 5
    assert [len(record.messages) for record in sink.sessions] == [2, 2, 1]
    assert sink.wait_until(lambda: all(record.closed for record in sink.sessions))
    assert [record.commands[-1] for record in sink.sessions] == ["QUIT", "QUIT", "QUIT"]


async def test_idle_connections_are_closed_after_the_idle_timeout(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    pool = ConnectionPool(max_messages=100, idle_timeout=0.2)
    try:
        await send(sink, pool)
        assert pool.idle() == 1
        closed = await sink.wait_until_async(lambda: sink.sessions[0].closed, timeout=5)
        assert closed
        assert sink.sessions[0].commands[-1] == "QUIT"
        assert pool.idle() == 0

        await send(sink, pool, number=2)  # a fresh session, not the closed one
    finally:
        await pool.close()
    assert len(sink.sessions) == 2
    assert len(sink.messages) == 2


async def test_a_connection_broken_at_rset_is_retried_on_a_fresh_one_without_a_duplicate(
    make_sink: MakeSink, pool: ConnectionPool
) -> None:
    sink = make_sink("127.0.0.2", drop_on_rset=True)
    first = await send(sink, pool, number=1)
    second = await send(sink, pool, number=2)

    assert delivered(first)
    assert delivered(second)
    assert [m.message_id for m in sink.messages] == ["<m1@mailroom.test>", "<m2@mailroom.test>"]
    assert commands(sink) == [
        ["EHLO", "MAIL", "RCPT", "DATA", "RSET"],
        ["EHLO", "MAIL", "RCPT", "DATA"],
    ]
    steps = [(step.command, step.reply.code) for step in second.steps]
    assert steps[0][0] == "RSET"
    assert steps[0][1] >= 400  # recorded, but not anyone's outcome
    assert steps[1] == ("connect", 220)


async def test_a_connection_the_server_closed_while_parked_is_not_used(
    make_sink: MakeSink, pool: ConnectionPool
) -> None:
    sink = make_sink("127.0.0.2", idle_timeout=0.2)  # aiosmtpd hangs up on idle clients
    await send(sink, pool, number=1)
    assert await sink.wait_until_async(lambda: sink.sessions[0].closed, timeout=5)
    await asyncio.sleep(0.05)  # let the client side see the close

    second = await send(sink, pool, number=2)
    assert delivered(second)
    assert len(sink.sessions) == 2
    assert [len(record.messages) for record in sink.sessions] == [1, 1]


async def test_concurrent_sessions_each_reuse_a_parked_connection(
    make_sink: MakeSink, pool: ConnectionPool
) -> None:
    sink = make_sink("127.0.0.2")
    first = await asyncio.gather(*(send(sink, pool, number=n) for n in range(4)))
    assert pool.idle() == 4
    second = await asyncio.gather(*(send(sink, pool, number=n) for n in range(4, 8)))

    assert all(delivered(result) for result in [*first, *second])
    assert len(sink.messages) == 8
    assert len(sink.sessions) == 4
    assert sorted(len(record.messages) for record in sink.sessions) == [2, 2, 2, 2]


async def test_no_reuse_after_the_server_says_421(
    make_sink: MakeSink, pool: ConnectionPool
) -> None:
    sink = make_sink("127.0.0.2")
    result = await send(sink, pool, ["421-disconnect@mx.test"])
    assert result.replies["421-disconnect@mx.test"].code == 421
    assert pool.idle() == 0
    await send(sink, pool, number=2)
    assert len(sink.sessions) == 2


async def test_a_refused_message_leaves_the_connection_reusable(
    make_sink: MakeSink, pool: ConnectionPool
) -> None:
    sink = make_sink("127.0.0.2")
    refused = await send(sink, pool, ["550-unknown@mx.test"], number=1)
    accepted = await send(sink, pool, number=2)

    assert refused.replies["550-unknown@mx.test"].code == 550
    assert delivered(accepted)
    assert commands(sink) == [["EHLO", "MAIL", "RCPT", "RSET", "MAIL", "RCPT", "DATA"]]


async def test_an_authenticated_tls_connection_is_reused_without_a_second_login(
    make_sink: MakeSink, tls: TlsMaterial, pool: ConnectionPool
) -> None:
    sink = make_sink(
        "127.0.0.2",
        starttls_context=tls.server_context("localhost"),
        require_starttls=True,
        auth=("svc", "relay-pw-123"),
    )
    policy = relay_policy("starttls", str(tls.ca_file))
    account = Credentials("svc", "relay-pw-123")
    for n in (1, 2):
        result = await send(sink, pool, number=n, tls=policy, credentials=account, host="localhost")
        assert delivered(result)
        assert result.tls

    assert len(sink.sessions) == 1
    assert len(sink.auth_attempts) == 1
    assert all(m.tls for m in sink.messages)
    # A different account never gets that connection.
    other = PoolKey("", "localhost", sink.host, sink.port, policy.identity, "someone-else")
    assert pool.take(other) is None


async def test_without_a_pool_every_message_has_its_own_session(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    for n in (1, 2):
        assert delivered(await send(sink, None, number=n))

    assert sink.wait_until(lambda: all(record.closed for record in sink.sessions))
    assert commands(sink) == [["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]] * 2


async def test_a_probe_never_parks_a_connection(make_sink: MakeSink, pool: ConnectionPool) -> None:
    sink = make_sink("127.0.0.2")
    deadline = asyncio.get_running_loop().time() + FAST.session
    result = await run_session(
        Peer("mx.test", sink.host, sink.port, None, "client.mailroom.test", FAST),
        Errand(message(), ["a@mx.test"], deadline, probe=True, pool=pool),
    )
    assert result.replies["a@mx.test"].code == Code.OK
    assert pool.idle() == 0
    assert sink.wait_until(lambda: sink.sessions[0].closed)
    assert sink.sessions[0].commands == ["EHLO", "MAIL", "RCPT", "QUIT"]


def test_the_setting_turns_reuse_off() -> None:
    on = DeliveryAgent.from_settings(Settings(helo_name="client.mailroom.test"))
    off = DeliveryAgent.from_settings(
        Settings(helo_name="client.mailroom.test", connection_reuse=False)
    )
    assert on.pool is not None
    assert off.pool is None


# The connection cap with reuse: a real Limiter on a real Redis, MX look-ups from dnsmasq.


def capped_agent(
    dns_server: DnsServer, port: int, client: redis.Redis, cap: int, timeouts: Timeouts = FAST
) -> tuple[DeliveryAgent, Limiter]:
    limiter = Limiter(client, rates={}, connections={"implicit.test": cap}, lease_ttl=30)
    resolver = MxResolver([dns_server.address], port=port, timeout=2)
    pool = ConnectionPool(max_messages=100, idle_timeout=5)
    agent = DeliveryAgent(
        AgentConfig(
            resolver=resolver,
            mx_port=port,
            relay=None,
            helo="client.mailroom.test",
            timeouts=timeouts,
        ),
        pool=pool,
        cap=limiter,
    )
    return agent, limiter


async def test_deliveries_over_the_cap_wait_for_the_open_connection(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink, redis_client: redis.Redis
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)  # implicit.test's A record
    agent, _ = capped_agent(dns_server, mx_port, redis_client, cap=1)
    try:
        reports = await asyncio.gather(
            *(agent.deliver(message(), "implicit.test", [f"u{n}@implicit.test"]) for n in range(5))
        )
        # The connection, parked, still holds the cap's one lease.
        assert redis_client.zcard("mailroom:rate:conn:implicit.test") == 1
    finally:
        await agent.close()

    assert all(isinstance(o, Delivered) for r in reports for o in r.outcomes)
    assert len(sink.messages) == 5
    assert len(sink.sessions) == 1  # never a second connection: the others waited for it
    assert sink.wait_until(lambda: sink.sessions[0].closed)
    # Closed, the connection gave its lease back.
    assert redis_client.zcard("mailroom:rate:conn:implicit.test") == 0


async def test_a_delivery_that_finds_no_connection_in_time_is_throttled_not_attempted(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink, redis_client: redis.Redis
) -> None:
    make_sink("127.0.0.5", port=mx_port)
    # A 2 s session deadline: the delivery waits half of it for a connection, then gives up.
    short = Timeouts(connect=1, command=1, data=1, session=2)
    agent, limiter = capped_agent(dns_server, mx_port, redis_client, cap=1, timeouts=short)
    held = limiter.connection_lease("implicit.test")  # another worker holds the only slot
    assert isinstance(held, Granted)
    try:
        report = await agent.deliver(message(), "implicit.test", ["a@implicit.test"])
    finally:
        await agent.close()

    [outcome] = report.outcomes
    assert isinstance(outcome, Deferred)
    assert (outcome.reply.enhanced, outcome.reply.step) == ("4.4.5", Step.GATE)
    assert report.attempts == ()
