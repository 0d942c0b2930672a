"""Whole deliveries: dnsmasq answers the MX look-ups, aiosmtpd sinks and raw servers on
127.0.0.x play the mail exchangers, all on one MX port as real MX hosts share port 25.

Zone (tests/support/dns_server.py): mx.test → mx1 127.0.0.2, mx2 127.0.0.3 (both preference 10),
backup 127.0.0.4 (20); multi.test → one host with 127.0.0.6, 127.0.0.7, ::1; implicit.test → A
127.0.0.5; nullmx.test → MX 0 .; missing.test → NXDOMAIN; servfail.test → SERVFAIL.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from settings import Rate, Settings
from tests.support.dns_server import DnsServer
from tests.support.raw_servers import MakeGreetingServer, MakeRefusedPort
from tests.support.redis_server import RedisServerFactory
from tests.support.smtp_sink import MakeSink, Sink
from tests.support.tls_material import TlsMaterial
from tests.workers.test_smtp_session import message
from workers.delivery.agent import DeliveryAgent
from workers.delivery.config import AgentConfig, Relay
from workers.delivery.gate import ConnectionCap
from workers.delivery.mx import MxResolver
from workers.model.outcome import Bounced, Deferred, Delivered
from workers.model.reply import Step
from workers.model.report import DeliveryReport
from workers.model.throttling import Granted, Throttled
from workers.smtp.peer import Credentials
from workers.smtp.record import Timeouts
from workers.smtp.tls_policy import relay_policy
from workers.traffic.rate_limits import Limiter

FAST = Timeouts(connect=1, command=2, data=2, session=10)


def agent(dns_server: DnsServer, port: int, timeouts: Timeouts = FAST) -> DeliveryAgent:
    resolver = MxResolver([dns_server.address], port=port, timeout=2)
    return DeliveryAgent(
        AgentConfig(
            resolver=resolver,
            mx_port=port,
            relay=None,
            helo="client.mailroom.test",
            timeouts=timeouts,
        )
    )


def hosts(report: DeliveryReport) -> list[tuple[str, str]]:
    return [(attempt.host, attempt.address) for attempt in report.attempts]


async def test_delivers_to_the_first_mx_that_answers(
    dns_server: DnsServer,
    mx_port: int,
    make_sink: MakeSink,
    make_refused_port: MakeRefusedPort,
    make_greeting_server: MakeGreetingServer,
) -> None:
    make_refused_port("127.0.0.2", mx_port)  # mx1: connection refused
    greylist = make_greeting_server("421 4.3.2 try later", "127.0.0.3", port=mx_port)  # mx2
    backup = make_sink("127.0.0.4", port=mx_port)
    report = await agent(dns_server, mx_port).deliver(message(), "mx.test", ["a@mx.test"])

    [outcome] = report.outcomes
    assert isinstance(outcome, Delivered)
    tried = hosts(report)
    assert sorted(tried[:2]) == [("mx1.mx.test", "127.0.0.2"), ("mx2.mx.test", "127.0.0.3")]
    assert tried[2] == ("backup.mx.test", "127.0.0.4")
    assert greylist.connections == 1
    assert backup.messages[0].rcpt_tos == ("a@mx.test",)
    assert report.resolution.reply.step is Step.RESOLVE_MX
    assert "mx1.mx.test" in report.resolution.reply.text


async def test_every_address_of_a_host_is_tried(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink, make_refused_port: MakeRefusedPort
) -> None:
    make_refused_port("127.0.0.6", mx_port)
    make_refused_port("127.0.0.7", mx_port)
    sink = make_sink("::1", port=mx_port)
    report = await agent(dns_server, mx_port).deliver(message(), "multi.test", ["a@multi.test"])

    assert isinstance(report.outcomes[0], Delivered)
    tried = hosts(report)
    assert sorted(tried[:2]) == [("dual.multi.test", "127.0.0.6"), ("dual.multi.test", "127.0.0.7")]
    assert tried[2] == ("dual.multi.test", "::1")
    assert len(sink.messages) == 1


async def test_all_mx_unreachable_defers_with_the_last_reply(
    dns_server: DnsServer, mx_port: int, make_refused_port: MakeRefusedPort
) -> None:
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        make_refused_port(address, mx_port)
    report = await agent(dns_server, mx_port).deliver(message(), "mx.test", ["a@mx.test"])

    [outcome] = report.outcomes
    assert isinstance(outcome, Deferred)
    assert (outcome.reply.code, outcome.reply.enhanced) == (421, "4.4.1")
    assert len(report.attempts) == 3


async def test_recipient_refusal_is_final_and_not_retried_elsewhere(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    sinks = [
        make_sink(address, port=mx_port) for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    ]
    report = await agent(dns_server, mx_port).deliver(
        message(), "mx.test", ["550-unknown@mx.test", "ok@mx.test"]
    )

    unknown, ok = report.outcomes
    assert isinstance(unknown, Bounced)
    assert (unknown.reply.code, unknown.reply.step) == (550, Step.RCPT_TO)
    assert isinstance(ok, Delivered)
    assert len(report.attempts) == 1
    assert sum(len(sink.messages) for sink in sinks) == 1


async def test_greylisted_recipient_is_tried_at_the_next_mx_then_deferred(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        make_sink(address, port=mx_port)
    report = await agent(dns_server, mx_port).deliver(
        message(), "mx.test", ["451-greylist@mx.test"]
    )

    [outcome] = report.outcomes
    assert isinstance(outcome, Deferred)
    assert (outcome.reply.code, outcome.reply.enhanced) == (451, "4.7.1")
    # Postfix's smtp_mx_session_limit: at most two sessions that got a greeting.
    assert len(report.attempts) == 2


async def test_implicit_mx_delivers_to_the_domain_itself(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    report = await agent(dns_server, mx_port).deliver(
        message(), "implicit.test", ["a@implicit.test"]
    )

    assert isinstance(report.outcomes[0], Delivered)
    assert hosts(report) == [("implicit.test", "127.0.0.5")]
    assert len(sink.messages) == 1


async def test_5xx_greeting_of_the_only_mx_bounces(
    dns_server: DnsServer, mx_port: int, make_greeting_server: MakeGreetingServer
) -> None:
    make_greeting_server("554 5.7.1 no mail here", "127.0.0.5", port=mx_port)
    report = await agent(dns_server, mx_port).deliver(
        message(), "implicit.test", ["a@implicit.test"]
    )

    [outcome] = report.outcomes
    assert isinstance(outcome, Bounced)
    assert (outcome.reply.code, outcome.reply.step) == (554, Step.OPEN_SESSION)


@pytest.mark.parametrize(
    ("domain", "kind", "code", "enhanced"),
    [
        ("nullmx.test", Bounced, 556, "5.1.10"),
        ("missing.test", Bounced, 550, "5.1.2"),
        ("servfail.test", Deferred, 451, "4.4.3"),
    ],
)
async def test_dns_outcomes_need_no_connection(
    dns_server: DnsServer, mx_port: int, domain: str, kind: type, code: int, enhanced: str
) -> None:
    report = await agent(dns_server, mx_port).deliver(
        message(), domain, [f"a@{domain}", f"b@{domain}"]
    )

    assert [type(outcome) for outcome in report.outcomes] == [kind, kind]
    assert {(o.reply.code, o.reply.enhanced, o.reply.step) for o in report.outcomes} == {
        (code, enhanced, Step.RESOLVE_MX)
    }
    assert report.attempts == ()
    assert report.resolution.reply.code == code


async def test_failed_opportunistic_handshake_is_retried_in_plaintext(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port, broken_starttls=True)
    report = await agent(dns_server, mx_port).deliver(
        message(), "implicit.test", ["a@implicit.test"]
    )

    assert isinstance(report.outcomes[0], Delivered)
    assert hosts(report) == [("implicit.test", "127.0.0.5")] * 2
    first, second = sink.sessions
    assert "STARTTLS" in first.commands
    assert first.mail_from == []
    assert "STARTTLS" not in second.commands
    assert not sink.messages[0].tls


async def test_deadline_bounds_the_whole_delivery(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        make_sink(address, port=mx_port, slow_seconds=2)
    timeouts = Timeouts(connect=1, command=5, data=5, session=0.5)
    report = await agent(dns_server, mx_port, timeouts).deliver(
        message(), "mx.test", ["slow-rcpt@mx.test"]
    )

    [outcome] = report.outcomes
    assert isinstance(outcome, Deferred)
    assert outcome.reply.enhanced == "4.4.7"
    assert len(report.attempts) == 1


async def test_relay_mode_from_settings_sends_everything_through_the_relay(
    make_sink: MakeSink, tls: TlsMaterial
) -> None:
    sink = make_sink(
        "127.0.0.1",
        starttls_context=tls.server_context("localhost"),
        require_starttls=True,
        auth=("svc", "relay-pw-123"),
    )
    settings = Settings(
        delivery="relay",
        relay_host="localhost",
        relay_port=sink.port,
        relay_username="svc",
        relay_password="relay-pw-123",
        tls_ca_file=str(tls.ca_file),
        helo_name="client.mailroom.test",
        connect_timeout=1,
        command_timeout=2,
        data_timeout=2,
        session_timeout=10,
    )
    relay = DeliveryAgent.from_settings(settings)
    try:
        report = await relay.deliver(message(), "relay", ["a@one.example", "b@two.example"])
    finally:
        await relay.close()

    assert [type(o) for o in report.outcomes] == [Delivered, Delivered]
    assert sink.messages[0].rcpt_tos == ("a@one.example", "b@two.example")
    assert sink.auth_attempts[0].tls
    assert "relay-pw-123" not in repr(report)
    assert "relay-pw-123" not in repr(Credentials("svc", "relay-pw-123"))


def split_relay(
    sink_port: int,
    tls: TlsMaterial,
    session: float,
    rates: Limiter | None = None,
    cap: ConnectionCap | None = None,
) -> DeliveryAgent:
    """A relay agent sending one recipient per message (as a profile's limit splits them)."""
    return DeliveryAgent(
        AgentConfig(
            resolver=MxResolver([("127.0.0.1", 9)], port=9, timeout=0.2),
            mx_port=9,
            relay=Relay("localhost", sink_port, relay_policy("starttls", str(tls.ca_file)), None),
            helo="client.mailroom.test",
            timeouts=Timeouts(connect=1, command=2, data=3, session=session),
            max_recipients=1,
        ),
        rates=rates,
        cap=cap,
    )


def relay_sink(make_sink: MakeSink, tls: TlsMaterial, **options: Any) -> Sink:
    return make_sink("127.0.0.1", starttls_context=tls.server_context("localhost"), **options)


async def test_the_parts_of_a_relay_delivery_share_one_session_deadline(
    make_sink: MakeSink, tls: TlsMaterial
) -> None:
    # Each part takes 1.2 s to be answered; the whole delivery has 2 s.
    sink = relay_sink(make_sink, tls, slow_seconds=1.2)
    recipients = ["slow-data@one.example", "slow-data@two.example", "slow-data@three.example"]

    report = await split_relay(sink.port, tls, session=2).deliver(message(), "relay", recipients)

    assert [type(o) for o in report.outcomes] == [Delivered, Deferred, Deferred]
    # The second part ran out of the delivery's time; the third never connected.
    assert len(report.attempts) == 2
    assert len(sink.sessions) == 2


async def test_each_part_of_a_relay_delivery_takes_its_own_rate_slot(
    make_sink: MakeSink, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    # One message a minute: the batch's gate granted the first part's slot, as the batch does.
    limiter = Limiter(redis_client, rates={"relay": Rate(1, 60)}, connections={}, lease_ttl=30)
    assert isinstance(limiter.acquire("relay", "m1|relay"), Granted)
    sink = relay_sink(make_sink, tls)
    recipients = ["a@one.example", "b@two.example", "c@three.example"]

    report = await split_relay(sink.port, tls, session=10, rates=limiter).deliver(
        message(), "relay", recipients
    )

    first, *rest = report.outcomes
    assert isinstance(first, Delivered)
    assert [m.rcpt_tos for m in sink.messages] == [("a@one.example",)]
    # The next slot is a minute away: the other parts wait for it in the deferred set.
    assert all(isinstance(o, Deferred) and o.reply.step is Step.GATE for o in rest)
    assert all(55 < (o.retry_after or 0) <= 60 for o in rest if isinstance(o, Deferred))


async def test_parts_whose_rate_slots_come_in_time_wait_for_them(
    make_sink: MakeSink, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    limiter = Limiter(redis_client, rates={"relay": Rate(5, 1)}, connections={}, lease_ttl=30)
    assert isinstance(limiter.acquire("relay", "m1|relay"), Granted)
    sink = relay_sink(make_sink, tls)

    report = await split_relay(sink.port, tls, session=10, rates=limiter).deliver(
        message(), "relay", ["a@one.example", "b@two.example"]
    )

    assert [type(o) for o in report.outcomes] == [Delivered, Delivered]
    assert [m.rcpt_tos for m in sink.messages] == [("a@one.example",), ("b@two.example",)]
    # Both slots are taken: a third message now has to wait for a later one.
    assert isinstance(limiter.acquire("relay", "m2|relay"), Throttled)


class _RedisDiesAtFirstRelease:
    """A real Limiter's connection cap whose Redis is stopped for real just before the first
    lease goes back: the moment between a delivered part and the next part's lease."""

    def __init__(self, limiter: Limiter, stop: Any) -> None:
        self._limiter = limiter
        self._stop = stop

    def connection_lease(self, destination: str) -> Granted | Throttled:
        return self._limiter.connection_lease(destination)

    def release_lease(self, destination: str, lease: str) -> None:
        self._stop()
        self._limiter.release_lease(destination, lease)


async def test_redis_failing_between_the_parts_of_a_delivery_keeps_the_part_already_sent(
    make_sink: MakeSink, tls: TlsMaterial, make_redis_server: RedisServerFactory
) -> None:
    server = make_redis_server()
    client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
    limiter = Limiter(client, rates={}, connections={"relay": 1}, lease_ttl=30)
    sink = relay_sink(make_sink, tls)
    cap = _RedisDiesAtFirstRelease(limiter, server.stop)

    report = await split_relay(sink.port, tls, session=10, cap=cap).deliver(
        message(), "relay", ["a@one.example", "b@two.example"]
    )

    # The first part was accepted and stays delivered: raising here would defer it whole and
    # send it again. The second part never got a lease, so it waits at the gate, unsent.
    first, second = report.outcomes
    assert isinstance(first, Delivered)
    assert isinstance(second, Deferred)
    assert second.reply.step is Step.GATE
    assert second.reply.enhanced == "4.4.5"
    assert [m.rcpt_tos for m in sink.messages] == [("a@one.example",)]
