"""MX_DENY_NETWORKS: mail exchangers whose addresses fall in denied networks are never dialled.

dnsmasq serves the standard zone (mx.test → mx1 127.0.0.2, mx2 127.0.0.3, backup 127.0.0.4;
multi.test → 127.0.0.6, 127.0.0.7, ::1; implicit.test → 127.0.0.5); aiosmtpd sinks play the
servers and record every connection they get.
"""

from __future__ import annotations

import ipaddress

from tests.support.dns_server import DnsServer
from tests.support.smtp_sink import MakeSink
from tests.workers.test_delivery import FAST
from tests.workers.test_smtp_session import message
from workers.delivery.agent import DeliveryAgent
from workers.delivery.config import AgentConfig
from workers.delivery.mx import MxResolver, Target
from workers.model.outcome import Bounced, Delivered, classify
from workers.model.reply import Reply, Step


def resolver(dns_server: DnsServer, port: int, *denied: str) -> MxResolver:
    networks = tuple(ipaddress.ip_network(network) for network in denied)
    return MxResolver([dns_server.address], port=port, timeout=2, deny_networks=networks)


def agent(dns_server: DnsServer, port: int, *denied: str) -> DeliveryAgent:
    return DeliveryAgent(
        AgentConfig(
            resolver=resolver(dns_server, port, *denied),
            mx_port=port,
            relay=None,
            helo="client.mailroom.test",
            timeouts=FAST,
        )
    )


async def test_a_denied_mx_is_skipped_and_never_connected_to(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    denied = make_sink("127.0.0.2", port=mx_port)
    allowed = make_sink("127.0.0.3", port=mx_port)
    report = await agent(dns_server, mx_port, "127.0.0.2/32").deliver(
        message(), "mx.test", ["a@mx.test"]
    )

    assert isinstance(report.outcomes[0], Delivered)
    assert [(a.host, a.address) for a in report.attempts] == [("mx2.mx.test", "127.0.0.3")]
    assert len(allowed.messages) == 1
    assert denied.sessions == []


async def test_only_the_denied_addresses_of_a_host_are_dropped(
    dns_server: DnsServer, mx_port: int
) -> None:
    answer = await resolver(dns_server, mx_port, "127.0.0.6/31").resolve("multi.test")

    assert isinstance(answer, tuple)
    assert [target.addresses for target in answer] == [("::1",)]


async def test_ipv4_mapped_addresses_are_checked_as_ipv4(
    dns_server: DnsServer, mx_port: int
) -> None:
    answer = await resolver(dns_server, mx_port, "::/127").resolve("multi.test")
    assert isinstance(answer, tuple)
    assert [sorted(target.addresses) for target in answer] == [["127.0.0.6", "127.0.0.7"]]
    mapped = resolver(dns_server, mx_port, "127.0.0.0/8")
    assert mapped.denies("::ffff:127.0.0.9")
    assert not mapped.denies("::1")


async def test_when_every_mx_is_denied_the_delivery_bounces_without_a_connection(
    dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    sinks = [make_sink(host, port=mx_port) for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4")]
    report = await agent(dns_server, mx_port, "127.0.0.0/8").deliver(
        message(), "mx.test", ["a@mx.test"]
    )

    [outcome] = report.outcomes
    assert isinstance(outcome, Bounced)
    reply = outcome.reply
    assert (reply.code, reply.enhanced, reply.step) == (550, "5.7.1", Step.RESOLVE_MX)
    assert "MX_DENY_NETWORKS" in reply.text
    assert report.attempts == ()
    assert all(sink.sessions == [] for sink in sinks)


async def test_an_implicit_mx_in_a_denied_network_bounces(
    dns_server: DnsServer, mx_port: int
) -> None:
    answer = await resolver(dns_server, mx_port, "127.0.0.5/32").resolve("implicit.test")

    assert isinstance(answer, Reply)
    assert isinstance(classify("a@implicit.test", answer), Bounced)


async def test_without_denied_networks_nothing_is_filtered(
    dns_server: DnsServer, mx_port: int
) -> None:
    answer = await resolver(dns_server, mx_port).resolve("implicit.test")
    assert answer == (Target("implicit.test", ("127.0.0.5",), mx_port, 0),)
