"""Pure parser of an SPF record's terms (RFC 7208 §4.6, §5, §6): directives with their
qualifiers, and the redirect= modifier. Macros (§7) are kept as written: whether a term uses one
is for the evaluator (`tasks.sender_domain.spf`) to decide, since a macro depends on the message.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

from tasks.sender_domain.records import Malformed

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_VERSION = re.compile(r"v=spf1(?: |$)", re.IGNORECASE)
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)")
_MECHANISM = re.compile(r"([A-Za-z0-9]+)(?::([^/]*))?(?:/(\d+))?(?://(\d+))?")
_KINDS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_NEEDS_DOMAIN = ("include", "exists")


class Qualifier(StrEnum):
    PASS = "+"
    FAIL = "-"
    SOFTFAIL = "~"
    NEUTRAL = "?"


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One directive: `text` as written, what it matches, and its qualifier."""

    text: str
    qualifier: Qualifier
    kind: str  # one of _KINDS
    domain: str | None = None  # the domain-spec (include, exists, a, mx, ptr), macros unexpanded
    network: Network | None = None  # ip4, ip6
    cidr4: int = 32  # a, mx: the prefix each IPv4 address found is widened to
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class SpfRecord:
    mechanisms: tuple[Mechanism, ...]
    redirect: str | None


def is_spf(text: str) -> bool:
    """Whether a TXT record is an SPF record (RFC 7208 §4.5: `v=spf1` alone or before a space)."""
    return _VERSION.match(text) is not None


def parse_spf(text: str) -> SpfRecord | Malformed:
    """The terms of a record that `is_spf`; a term that does not parse is malformed (permerror)."""
    mechanisms: list[Mechanism] = []
    redirect: str | None = None
    seen: set[str] = set()
    for term in text.split(" ")[1:]:
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier is not None and ":" not in modifier.group(1):
            name = modifier.group(1).lower()
            if name in seen and name in ("redirect", "exp"):
                return Malformed(f"{name}= is given twice")
            seen.add(name)
            if name == "redirect":
                if not modifier.group(2):
                    return Malformed("redirect= names no domain")
                redirect = modifier.group(2)
            continue  # exp= and unknown modifiers do not change the result (§6)
        mechanism = _mechanism(term)
        if isinstance(mechanism, Malformed):
            return mechanism
        mechanisms.append(mechanism)
    return SpfRecord(tuple(mechanisms), redirect)


def _mechanism(term: str) -> Mechanism | Malformed:
    qualifier = Qualifier.PASS
    body = term
    if term[0] in "+-~?":
        qualifier, body = Qualifier(term[0]), term[1:]
    found = _MECHANISM.fullmatch(body)
    kind = found.group(1).lower() if found else ""
    if found is None or kind not in _KINDS:
        return Malformed(f"unknown term {_short(term)}")
    value, cidr4, cidr6 = found.group(2), found.group(3), found.group(4)
    if kind == "all":
        if value is not None or cidr4 or cidr6:
            return Malformed(f"{_short(term)}: all takes no argument")
        return Mechanism(term, qualifier, kind)
    if kind in ("ip4", "ip6"):
        return _ip_mechanism(term, qualifier, kind)
    if kind in _NEEDS_DOMAIN and not value:
        return Malformed(f"{_short(term)}: {kind} needs a domain")
    if value == "" or (kind in ("include", "exists", "ptr") and (cidr4 or cidr6)):
        return Malformed(f"unknown term {_short(term)}")
    bits4 = 32 if cidr4 is None else int(cidr4)
    bits6 = 128 if cidr6 is None else int(cidr6)
    if bits4 > 32 or bits6 > 128:
        return Malformed(f"{_short(term)}: prefix length out of range")
    return Mechanism(term, qualifier, kind, domain=value, cidr4=bits4, cidr6=bits6)


def _ip_mechanism(term: str, qualifier: Qualifier, kind: str) -> Mechanism | Malformed:
    # ip6 addresses hold colons, which the generic pattern cannot tell from the separator.
    _, colon, rest = term.partition(":")
    address, slash, prefix = rest.partition("/")
    if not colon or not address:
        return Malformed(f"{kind} needs an address: {_short(term)}")
    try:
        ip = ipaddress.ip_address(address)
        if (ip.version == 4) != (kind == "ip4"):
            raise ValueError(address)
        bits = ip.max_prefixlen if not slash else int(prefix) if prefix.isdigit() else -1
        network = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
    except ValueError:
        return Malformed(f"{_short(term)} is not a valid {kind} network")
    return Mechanism(term, qualifier, kind, network=network)


def _short(term: str) -> str:
    return repr(term if len(term) <= 60 else term[:60] + "...")
