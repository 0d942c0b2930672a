"""Step 2, resolve_mx: a destination domain → the hosts to try, in order, with every address.

RFC 5321 §5.1: MX records by preference, equal preferences in random order (shuffled on every
call); a domain without MX records is its own mail exchanger (implicit MX); a single `MX 0 .`
means the domain takes no mail (RFC 7505). A and AAAA of every host are looked up concurrently;
hosts without an address are dropped. Addresses inside `deny_networks` (MX_DENY_NETWORKS) are
dropped too, before anything connects; when that leaves no address at all, the delivery bounces
(`denied_network`, 550 5.7.1) unless a temporary DNS failure hid a host. Answers (and null MX)
are cached in memory for the smallest TTL involved, on an injected clock. dnspython's exceptions
become `Reply`s in `_reply_for` only. The relay is resolved by the system resolver instead
(`resolve_host`), as docs/contract.md says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver

from workers.delivery.ttl_cache import TtlCache
from workers.model.reply import (
    Reply,
    denied_network,
    dns_temporary,
    no_address,
    no_such_domain,
    null_mx,
)

_MAX_CACHED = 10_000  # domains; a worker's memory must not grow with every domain ever seen
_ADDRESS_RDATA = (dns.rdtypes.IN.A.A, dns.rdtypes.IN.AAAA.AAAA)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Target:
    """One host to try, in order."""

    host: str  # MX host name (TLS SNI, logs), or the domain itself for an implicit MX
    addresses: tuple[str, ...]  # every address of the host, IPv4 then IPv6
    port: int
    preference: int


@dataclass(frozen=True, slots=True)
class _Records:
    """A successful look-up: its records (none for NODATA) and their TTL (None for NODATA)."""

    rdata: tuple[dns.rdata.Rdata, ...]
    ttl: int | None


@dataclass(frozen=True, slots=True)
class _Addresses:
    """Every allowed address of one host, their smallest TTL, the first temporary failure if
    any, and whether addresses were dropped for being in a denied network."""

    addresses: tuple[str, ...]
    ttl: int | None
    temporary: Reply | None
    denied: bool = False


# Preference groups, lowest first, each unshuffled; or the null MX reply.
_Answer = tuple[tuple[Target, ...], ...] | Reply


def _reply_for(exc: Exception, name: str) -> Reply:
    """The one translation of dnspython's (and the socket layer's) failures into a `Reply`."""
    match exc:
        case dns.resolver.NXDOMAIN():
            return no_such_domain(name)
        case dns.exception.SyntaxError() | dns.name.NameTooLong() | dns.name.IDNAException():
            # Not a valid domain name: it can never resolve, like a domain that does not exist.
            return no_such_domain(name)
        case dns.exception.Timeout():
            return dns_temporary(name, "no nameserver answered in time")
        case dns.resolver.NoNameservers():
            return dns_temporary(name, f"no nameserver gave an answer ({exc})")
        case _:
            return dns_temporary(name, str(exc) or type(exc).__name__)


def _min_ttl(*ttls: int | None) -> int | None:
    known = [ttl for ttl in ttls if ttl is not None]
    return min(known) if known else None


@dataclass(frozen=True, slots=True)
class Sources:
    """Where a resolver gets the time (its cache's expiry) and chance (the order of MX hosts of
    equal preference); tests pass their own to make both predictable."""

    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)


class MxResolver:
    """Resolves destination domains to ordered `Target`s, with an in-memory TTL cache."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]],
        *,
        port: int,
        timeout: float,
        deny_networks: Sequence[Network] = (),
        sources: Sources | None = None,
    ) -> None:
        """Use `nameservers` ((ip, port) pairs), or the system's resolver when empty.

        `port` is the SMTP port of every target; `timeout` bounds each DNS query, retries
        included; addresses in `deny_networks` are never targets. Raises dnspython's
        `NoResolverConfiguration` at once when `nameservers` is empty and the system has no
        usable resolver configuration.
        """
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, server_port) for ip, server_port in nameservers
            ]
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=True)
        self._resolver.lifetime = timeout
        # Half the lifetime per try, so a lost UDP datagram gets one more chance.
        self._resolver.timeout = timeout / 2
        self._port = port
        sources = sources if sources is not None else Sources()
        self._rng = sources.rng
        self._cache: TtlCache[dns.name.Name, _Answer] = TtlCache(sources.clock, _MAX_CACHED)
        self._deny = tuple(deny_networks)

    def denies(self, address: str) -> bool:
        """Whether `address` is in a denied network (an IPv4-mapped IPv6 address as its IPv4)."""
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._deny)

    async def resolve(self, domain: str) -> tuple[Target, ...] | Reply:
        """The targets for `domain` (U-labels accepted), best first, or the `Reply` saying why not.

        Returns `null_mx` (556 5.1.10) for `MX 0 .`, `no_such_domain` (550 5.1.2) for NXDOMAIN,
        `dns_temporary` (451 4.4.3) for SERVFAIL, timeouts and unreachable nameservers,
        `denied_network` (550 5.7.1) when every address is in a denied network, and
        `no_address` (451 4.4.4) when no host has an address.
        """
        shown = domain.rstrip(".")
        try:
            name = dns.name.from_text(shown)
        except dns.exception.DNSException as exc:
            return _reply_for(exc, shown)
        if name == dns.name.root:  # "" and "." parse as the root, which takes no mail
            return no_such_domain(shown or ".")
        answer = self._cache.get(name)
        if answer is None:
            answer, ttl = await self._look_up(name, shown)
            if ttl is not None and ttl > 0:
                self._cache.put(name, answer, ttl)
        if isinstance(answer, Reply):
            return answer
        return tuple(target for group in answer for target in self._shuffled(group))

    async def host_addresses(self, host: str) -> tuple[str, ...] | Reply:
        """Every allowed address of `host` (not in a denied network), IPv4 first, or the
        `Reply` saying why there is none (`denied_network` when all were denied). Not cached:
        for rare look-ups beside delivery (the MTA-STS policy host)."""
        try:
            name = dns.name.from_text(host)
        except dns.exception.DNSException as exc:
            return _reply_for(exc, host)
        found = await self._addresses(name)
        if found.addresses:
            return found.addresses
        return found.temporary or _none_left(host, found.denied)

    async def texts(self, name: str) -> tuple[str, ...] | Reply:
        """The TXT records at `name`, each one's strings joined (RFC 7208 §3.3), undecodable
        bytes escaped; () when there are none. Not cached."""
        try:
            parsed = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            return _reply_for(exc, name)
        found = await self._query(parsed, dns.rdatatype.TXT)
        if isinstance(found, Reply):
            return found
        return tuple(
            b"".join(r.strings).decode("ascii", "backslashreplace")
            for r in found.rdata
            if isinstance(r, dns.rdtypes.ANY.TXT.TXT)
        )

    def _shuffled(self, group: tuple[Target, ...]) -> list[Target]:
        targets = list(group)
        self._rng.shuffle(targets)
        return targets

    async def _look_up(self, name: dns.name.Name, shown: str) -> tuple[_Answer, int | None]:
        """The answer for `name` and how long it may be cached (None: not at all)."""
        mx = await self._query(name, dns.rdatatype.MX)
        if isinstance(mx, Reply):
            return mx, None
        records = [r for r in mx.rdata if isinstance(r, dns.rdtypes.ANY.MX.MX)]
        if not records:
            return self._implicit(name, shown, await self._addresses(name))
        if len(records) == 1 and records[0].exchange == dns.name.root:
            return null_mx(shown), mx.ttl
        preferences: dict[dns.name.Name, int] = {}
        for record in records:
            # A root exchange beside real ones is a broken null MX: it names no host to try.
            if record.exchange != dns.name.root:
                old = preferences.get(record.exchange, record.preference)
                preferences[record.exchange] = min(old, record.preference)
        hosts = list(preferences)
        found = await asyncio.gather(*(self._addresses(host) for host in hosts))
        groups: dict[int, list[Target]] = {}
        for host, addresses in zip(hosts, found, strict=True):
            if addresses.addresses:
                target = Target(
                    host.to_text(omit_final_dot=True),
                    addresses.addresses,
                    self._port,
                    preferences[host],
                )
                groups.setdefault(target.preference, []).append(target)
        temporary = next((a.temporary for a in found if a.temporary is not None), None)
        if not groups:
            return (temporary or _none_left(shown, any(a.denied for a in found))), None
        # A temporary failure hid a host: caching would hide it for the whole TTL.
        ttl = None if temporary else _min_ttl(mx.ttl, *(a.ttl for a in found if a.addresses))
        return tuple(tuple(groups[pref]) for pref in sorted(groups)), ttl

    def _implicit(
        self, name: dns.name.Name, shown: str, found: _Addresses
    ) -> tuple[_Answer, int | None]:
        """RFC 5321 §5.1: no MX records, so the domain's own addresses, at preference 0."""
        if not found.addresses:
            return (found.temporary or _none_left(shown, found.denied)), None
        target = Target(name.to_text(omit_final_dot=True), found.addresses, self._port, 0)
        return ((target,),), None if found.temporary else found.ttl

    async def _addresses(self, host: dns.name.Name) -> _Addresses:
        """A and AAAA of `host`, looked up concurrently."""
        v4, v6 = await asyncio.gather(
            self._query(host, dns.rdatatype.A), self._query(host, dns.rdatatype.AAAA)
        )
        addresses: list[str] = []
        ttls: list[int | None] = []
        temporary: Reply | None = None
        for result in (v4, v6):
            if isinstance(result, Reply):
                # NXDOMAIN (5xx) just means no address; anything else may succeed later.
                if result.reply_class != 5 and temporary is None:
                    temporary = result
                continue
            addresses += [r.address for r in result.rdata if isinstance(r, _ADDRESS_RDATA)]
            ttls.append(result.ttl)
        unique = tuple(dict.fromkeys(addresses))
        allowed = tuple(address for address in unique if not self.denies(address))
        return _Addresses(allowed, _min_ttl(*ttls), temporary, len(allowed) < len(unique))

    async def _query(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> _Records | Reply:
        """One look-up: the library boundary, where every dnspython exception is translated."""
        try:
            answer = await self._resolver.resolve(
                name, rdtype, search=False, raise_on_no_answer=False
            )
        except (dns.exception.DNSException, OSError) as exc:
            return _reply_for(exc, name.to_text(omit_final_dot=True))
        if answer.rrset is None:
            return _Records((), None)
        return _Records(tuple(answer.rrset), answer.chaining_result.minimum_ttl)


def _none_left(shown: str, denied: bool) -> Reply:
    return denied_network(shown) if denied else no_address(shown)


async def resolve_host(host: str, port: int) -> Target | Reply:
    """The relay `host` as one `Target`, resolved by the system resolver (getaddrinfo).

    Returns `dns_temporary` (451 4.4.3) when the name does not resolve: a relay's name is
    configuration, which an operator may still fix.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return dns_temporary(host, str(exc) or type(exc).__name__)
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        return dns_temporary(host, "the system resolver returned no address")
    return Target(host, addresses, port, 0)
