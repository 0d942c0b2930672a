"""The DNS zones the scenarios serve from dnsmasq (tests/support/dns_server.py).

cpu       `bench.test MX 10 mx.bench.test`, `mx.bench.test A 127.0.0.2`: one destination
latency   `d0.test` … `d{n-1}.test`, each `MX 10 mx.sink.test`, `mx.sink.test A 127.0.0.3`: many
          destinations (own shard, connection cap and rate key each) on one sink process
Records live 300 s, so the workers' resolver cache works as it would on the internet.
"""

from __future__ import annotations

from tests.support.dns_server import Host, Mx, Zone

CPU_HOST = "127.0.0.2"
LATENCY_HOST = "127.0.0.3"
CPU_DOMAIN = "bench.test"


def cpu_zone() -> Zone:
    """One destination, `bench.test`, whose MX is 127.0.0.2."""
    return Zone(
        mx=(Mx(CPU_DOMAIN, "mx.bench.test", 10),), hosts=(Host("mx.bench.test", (CPU_HOST,)),)
    )


def latency_domains(count: int) -> list[str]:
    """`d0.test` … `d{count-1}.test`."""
    return [f"d{n}.test" for n in range(count)]


def latency_zone(count: int) -> Zone:
    """`count` destinations whose MX is one host, 127.0.0.3."""
    mx = tuple(Mx(domain, "mx.sink.test", 10) for domain in latency_domains(count))
    return Zone(mx=mx, hosts=(Host("mx.sink.test", (LATENCY_HOST,)),))
