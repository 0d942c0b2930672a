"""The resolver boundary of `mailroom check --sender-domain`: TXT, address and MX look-ups through
DNS_NAMESERVERS (or the system's resolver), each bounded by DNS_TIMEOUT as the delivery engine's
MX resolver is (workers/delivery/mx.py). dnspython's exceptions become values here only: a name
without records is `Missing`, a failure to get an answer (SERVFAIL, timeout) is `Unreadable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

_MAX_RECORDS = 20  # per answer: a hostile zone must not make the report unbounded


@dataclass(frozen=True, slots=True)
class Found:
    """The records at a name: TXT records with their strings joined, addresses, or MX hosts."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Missing:
    """The name does not exist, or has no records of that type."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """No answer could be had; `reason` is one line of Mailroom's own words."""

    reason: str


Answer = Found | Missing | Unreadable


class DnsReader:
    """Look-ups for the sender-domain check, cached for the duration of one check."""

    def __init__(self, nameservers: Sequence[tuple[str, int]], timeout: float) -> None:
        """Use `nameservers` ((ip, port) pairs), or the system's resolver when empty.

        Raises dnspython's `NoResolverConfiguration` when `nameservers` is empty and the system
        has no usable resolver configuration.
        """
        if nameservers:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers
            ]
        else:
            self._resolver = dns.resolver.Resolver(configure=True)
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout / 2  # a lost UDP datagram gets one more chance
        self._answers: dict[tuple[str, str], Answer] = {}

    def txt(self, name: str) -> Answer:
        """The TXT records at `name`, each one's strings joined without separator (RFC 7208
        §3.3, RFC 6376 §3.6.2.2), undecodable bytes kept as surrogates for escaping."""
        return self._query(name, "TXT")

    def addresses(self, name: str) -> Answer:
        """The A then AAAA addresses of `name`; unreadable when either look-up failed."""
        v4 = self._query(name, "A")
        if isinstance(v4, Unreadable):  # a dead nameserver costs one timeout, not two
            return v4
        v6 = self._query(name, "AAAA")
        if isinstance(v6, Unreadable):
            return v6
        found = [a for answer in (v4, v6) if isinstance(answer, Found) for a in answer.values]
        return Found(tuple(found)) if found else Missing()

    def mx(self, name: str) -> Answer:
        """The exchange host names of `name`'s MX records (a null MX's `.` included as "")."""
        return self._query(name, "MX")

    def _query(self, name: str, rdtype: str) -> Answer:
        key = (name.lower(), rdtype)
        if key not in self._answers:
            self._answers[key] = self._look_up(name, rdtype)
        return self._answers[key]

    def _look_up(self, name: str, rdtype: str) -> Answer:
        try:
            qname = dns.name.from_text(name)
            answer = self._resolver.resolve(
                qname, dns.rdatatype.from_text(rdtype), search=False, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Missing()
        except (dns.exception.SyntaxError, dns.name.NameTooLong, dns.name.LabelTooLong):
            return Unreadable("not a valid domain name")
        except dns.exception.Timeout:
            return Unreadable("no nameserver answered in time")
        except dns.resolver.NoNameservers:
            return Unreadable("no nameserver gave an answer (SERVFAIL or refused)")
        except (dns.exception.DNSException, OSError) as exc:
            return Unreadable(f"the look-up failed ({type(exc).__name__})")
        if answer.rrset is None:
            return Missing()
        values = [_value(rdata) for rdata in list(answer.rrset)[:_MAX_RECORDS]]
        return Found(tuple(values)) if values else Missing()


def _value(rdata: object) -> str:
    strings = getattr(rdata, "strings", None)
    if strings is not None:  # TXT
        return b"".join(strings).decode("utf-8", errors="surrogateescape")
    exchange = getattr(rdata, "exchange", None)
    if isinstance(exchange, dns.name.Name):  # MX
        return exchange.to_text(omit_final_dot=True) if exchange != dns.name.root else ""
    return str(getattr(rdata, "address", ""))
