"""workers/mx.py against a real dnsmasq on loopback (zones in tests/support/dns_server.py)."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

import pytest

from tests.support.dns_server import STANDARD_ZONE, DnsServer, Host, Mx, Query, Zone
from workers.delivery.mx import MxResolver, Sources, Target, resolve_host
from workers.model.outcome import Bounced, Deferred, classify
from workers.model.reply import Reply, Step, no_address, no_such_domain, null_mx

SMTP_PORT = 2525
MX_ORDERS = {
    ("mx1.mx.test", "mx2.mx.test", "backup.mx.test"),
    ("mx2.mx.test", "mx1.mx.test", "backup.mx.test"),
}


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def resolver_for(
    *nameservers: tuple[str, int],
    timeout: float = 2.0,
    clock: Callable[[], float] | None = None,
    rng: random.Random | None = None,
) -> MxResolver:
    return MxResolver(
        list(nameservers),
        port=SMTP_PORT,
        timeout=timeout,
        sources=Sources(clock or FakeClock(), rng if rng is not None else random.Random()),
    )


def targets_of(answer: tuple[Target, ...] | Reply) -> tuple[Target, ...]:
    assert isinstance(answer, tuple), f"expected targets, got {answer}"
    return answer


def reply_of(answer: tuple[Target, ...] | Reply) -> Reply:
    assert isinstance(answer, Reply), f"expected a reply, got {answer}"
    return answer


async def test_targets_come_in_preference_order(dns_server: DnsServer) -> None:
    targets = targets_of(await resolver_for(dns_server.address).resolve("mx.test"))
    assert [t.preference for t in targets] == [10, 10, 20]
    assert {t.host for t in targets[:2]} == {"mx1.mx.test", "mx2.mx.test"}
    assert {t.host: t.addresses for t in targets} == {
        "mx1.mx.test": ("127.0.0.2",),
        "mx2.mx.test": ("127.0.0.3",),
        "backup.mx.test": ("127.0.0.4",),
    }
    assert targets[2] == Target("backup.mx.test", ("127.0.0.4",), SMTP_PORT, 20)


async def test_equal_preferences_are_shuffled(dns_server: DnsServer) -> None:
    orders = set()
    for seed in range(16):
        resolver = resolver_for(dns_server.address, rng=random.Random(seed))
        orders.add(tuple(t.host for t in targets_of(await resolver.resolve("mx.test"))))
    assert orders == MX_ORDERS


async def test_shuffle_happens_on_every_call_even_from_the_cache(
    make_dns_server: Callable[[Zone], DnsServer],
) -> None:
    server = make_dns_server(STANDARD_ZONE)
    resolver = resolver_for(server.address, rng=random.Random(7))
    targets_of(await resolver.resolve("mx.test"))
    server.stop()  # every answer below must come from the cache
    orders = {
        tuple(t.host for t in targets_of(await resolver.resolve("mx.test"))) for _ in range(16)
    }
    assert orders == MX_ORDERS


async def test_every_address_of_a_host_is_kept(dns_server: DnsServer) -> None:
    (target,) = targets_of(await resolver_for(dns_server.address).resolve("multi.test"))
    assert (target.host, target.port, target.preference) == ("dual.multi.test", SMTP_PORT, 10)
    # IPv4 first, then IPv6; dnsmasq may order the two A records either way.
    assert sorted(target.addresses[:2]) == ["127.0.0.6", "127.0.0.7"]
    assert target.addresses[2:] == ("::1",)


async def test_a_domain_without_mx_is_its_own_mail_exchanger(dns_server: DnsServer) -> None:
    targets = await resolver_for(dns_server.address).resolve("implicit.test")
    assert targets == (Target("implicit.test", ("127.0.0.5",), SMTP_PORT, 0),)


async def test_null_mx_bounces_without_any_address_lookup(dns_server: DnsServer) -> None:
    mark = dns_server.log_mark()
    reply = reply_of(await resolver_for(dns_server.address).resolve("nullmx.test"))
    assert reply == null_mx("nullmx.test")
    assert (reply.code, reply.enhanced, reply.step) == (556, "5.1.10", Step.RESOLVE_MX)
    assert isinstance(classify("a@nullmx.test", reply), Bounced)
    assert dns_server.queries_since(mark) == [Query("MX", "nullmx.test")]


async def test_nxdomain_is_a_permanent_failure(dns_server: DnsServer) -> None:
    reply = reply_of(await resolver_for(dns_server.address).resolve("missing.test"))
    assert reply == no_such_domain("missing.test")
    assert (reply.code, reply.enhanced, reply.step) == (550, "5.1.2", Step.RESOLVE_MX)
    assert isinstance(classify("a@missing.test", reply), Bounced)


async def test_servfail_is_a_temporary_failure(dns_server: DnsServer) -> None:
    reply = reply_of(await resolver_for(dns_server.address).resolve("servfail.test"))
    assert (reply.code, reply.enhanced, reply.step) == (451, "4.4.3", Step.RESOLVE_MX)
    assert "SERVFAIL" in reply.text
    assert isinstance(classify("a@servfail.test", reply), Deferred)


async def test_a_nameserver_that_never_answers_is_a_temporary_failure(
    dns_blackhole: tuple[str, int],
) -> None:
    reply = reply_of(await resolver_for(dns_blackhole, timeout=0.5).resolve("mx.test"))
    assert (reply.code, reply.enhanced, reply.step) == (451, "4.4.3", Step.RESOLVE_MX)
    assert "in time" in reply.text


async def test_mx_hosts_without_addresses_are_dropped(dns_server: DnsServer) -> None:
    targets = await resolver_for(dns_server.address).resolve("partial.test")
    assert targets == (Target("real.partial.test", ("127.0.0.8",), SMTP_PORT, 20),)


async def test_no_mx_host_with_an_address_is_a_temporary_failure(dns_server: DnsServer) -> None:
    reply = reply_of(await resolver_for(dns_server.address).resolve("noaddr.test"))
    assert reply == no_address("noaddr.test")
    assert isinstance(classify("a@noaddr.test", reply), Deferred)


async def test_mx_host_lookups_that_fail_temporarily_say_so(dns_server: DnsServer) -> None:
    reply = reply_of(await resolver_for(dns_server.address).resolve("tempfail.test"))
    assert (reply.code, reply.enhanced, reply.step) == (451, "4.4.3", Step.RESOLVE_MX)
    assert "mx.servfail.test" in reply.text


@pytest.mark.parametrize("domain", ["bücher.test", "BÜCHER.test.", "xn--bcher-kva.test"])
async def test_internationalized_domains_are_looked_up_by_their_a_label(
    dns_server: DnsServer, domain: str
) -> None:
    targets = await resolver_for(dns_server.address).resolve(domain)
    assert targets == (Target("mx.xn--bcher-kva.test", ("127.0.0.9",), SMTP_PORT, 10),)


@pytest.mark.parametrize("domain", ["a" * 64 + ".test", "a..test", "", "."])
async def test_an_invalid_domain_name_is_a_permanent_failure(
    dns_server: DnsServer, domain: str
) -> None:
    mark = dns_server.log_mark()
    reply = reply_of(await resolver_for(dns_server.address).resolve(domain))
    assert (reply.code, reply.enhanced, reply.step) == (550, "5.1.2", Step.RESOLVE_MX)
    assert dns_server.queries_since(mark) == []


@pytest.mark.parametrize(
    ("mx_ttl", "host_ttl"),
    [(300, 30), (30, 300)],
    ids=["host-ttl-shorter", "mx-ttl-shorter"],
)
async def test_answers_are_cached_for_their_smallest_ttl(
    make_dns_server: Callable[[Zone], DnsServer], mx_ttl: int, host_ttl: int
) -> None:
    zone = Zone(
        mx=(Mx("ttl.test", "mx.ttl.test", 10),),
        hosts=(Host("mx.ttl.test", ("127.0.0.2",), ttl=host_ttl),),
        ttl=mx_ttl,
    )
    server = make_dns_server(zone)
    clock = FakeClock()
    resolver = resolver_for(server.address, timeout=0.5, clock=clock)
    expected = (Target("mx.ttl.test", ("127.0.0.2",), SMTP_PORT, 10),)
    assert await resolver.resolve("ttl.test") == expected
    server.stop()
    clock.advance(29)
    assert await resolver.resolve("ttl.test") == expected
    clock.advance(2)
    reply = reply_of(await resolver.resolve("ttl.test"))
    assert (reply.code, reply.enhanced) == (451, "4.4.3")


async def test_null_mx_is_cached(make_dns_server: Callable[[Zone], DnsServer]) -> None:
    server = make_dns_server(Zone(null_mx=("nullmx.test",), ttl=60))
    clock = FakeClock()
    resolver = resolver_for(server.address, timeout=0.5, clock=clock)
    assert await resolver.resolve("nullmx.test") == null_mx("nullmx.test")
    server.stop()
    clock.advance(59)
    assert await resolver.resolve("nullmx.test") == null_mx("nullmx.test")
    clock.advance(2)
    assert reply_of(await resolver.resolve("nullmx.test")).code == 451


async def test_the_relay_is_resolved_by_the_system_resolver() -> None:
    target = await resolve_host("localhost", 587)
    assert isinstance(target, Target)
    assert (target.host, target.port, target.preference) == ("localhost", 587, 0)
    assert target.addresses
    assert all(ipaddress.ip_address(a).is_loopback for a in target.addresses)
    assert len(set(target.addresses)) == len(target.addresses)


async def test_a_relay_name_that_cannot_resolve_is_a_temporary_failure() -> None:
    # A label over 63 octets fails inside getaddrinfo's encoding, before any query is sent.
    reply = await resolve_host("a" * 64 + ".test", 587)
    assert isinstance(reply, Reply)
    assert (reply.code, reply.enhanced, reply.step) == (451, "4.4.3", Step.RESOLVE_MX)
