"""Does a domain's SPF record authorise what this deployment sends from? A bounded check_host()
(RFC 7208 §4) for one sender at a time: ip4, ip6, a, mx, include, redirect and all are evaluated
through the resolver, with the limits of §4.6.4 (10 terms that query DNS, 10 MX hosts per mx, 2
look-ups that find nothing). What depends on the message (macros, §7) or on reverse DNS (ptr) is
`UNKNOWN`: the record may or may not authorise the sender, and the report says so.

A sender is an address, or a relay provider named by the include its customers publish (Office
365's `spf.protection.outlook.com`): its addresses are the provider's business, so the include
itself is what authorises it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from tasks.sender_domain.dns_reader import Answer, Found, Unreadable
from tasks.sender_domain.records import Malformed
from tasks.sender_domain.spf_terms import Mechanism, Qualifier, is_spf, parse_spf

MAX_DNS_TERMS = 10  # RFC 7208 §4.6.4
MAX_VOID_LOOKUPS = 2
MAX_MX_HOSTS = 10

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Provider:
    """A relay provider, authorised by `include:<include>`."""

    name: str
    include: str


Sender = Address | Provider


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    UNKNOWN = "unknown"  # depends on the message or on reverse DNS


_OF_QUALIFIER = {
    Qualifier.PASS: Verdict.PASS,
    Qualifier.FAIL: Verdict.FAIL,
    Qualifier.SOFTFAIL: Verdict.SOFTFAIL,
    Qualifier.NEUTRAL: Verdict.NEUTRAL,
}


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The verdict for one sender, and which term (at which domain) decided it, or why not."""

    verdict: Verdict
    reason: str


class Lookups(Protocol):
    def txt(self, name: str) -> Answer: ...
    def addresses(self, name: str) -> Answer: ...
    def mx(self, name: str) -> Answer: ...


@dataclass
class _Budget:
    terms: int = 0
    voids: int = 0
    seen: set[str] = field(default_factory=set)


# What matching one term gives: whether it matched, or the evaluation that ends everything (a
# temperror, permerror or unknown met on the way, however deep in includes).
_Match = bool | Evaluation


def evaluate(lookups: Lookups, domain: str, sender: Sender, record: str) -> Evaluation:
    """check_host() for `sender` at `domain`, whose one SPF record is `record`."""
    return _check_record(lookups, domain, sender, record, _Budget())


def _check_host(lookups: Lookups, domain: str, sender: Sender, budget: _Budget) -> Evaluation:
    if "%" in domain:
        return Evaluation(Verdict.UNKNOWN, f"{domain!r} uses SPF macros")
    answer = lookups.txt(domain)
    if isinstance(answer, Unreadable):
        return Evaluation(Verdict.TEMPERROR, f"{domain}'s TXT could not be read: {answer.reason}")
    records = [text for text in answer.values if is_spf(text)] if isinstance(answer, Found) else []
    if not records:
        return Evaluation(Verdict.NONE, f"{domain} has no SPF record")
    if len(records) > 1:
        return Evaluation(Verdict.PERMERROR, f"{domain} has {len(records)} SPF records")
    return _check_record(lookups, domain, sender, records[0], budget)


def _check_record(
    lookups: Lookups, domain: str, sender: Sender, record: str, budget: _Budget
) -> Evaluation:
    parsed = parse_spf(record)
    if isinstance(parsed, Malformed):
        return Evaluation(Verdict.PERMERROR, f"{domain}'s SPF record: {parsed.reason}")
    for mechanism in parsed.mechanisms:
        matched = _matches(lookups, domain, sender, mechanism, budget)
        if isinstance(matched, Evaluation):
            return matched
        if matched:
            verdict = _OF_QUALIFIER[mechanism.qualifier]
            return Evaluation(verdict, f"{mechanism.text!r} at {domain}")
    if parsed.redirect is not None:
        over = _count(budget, f"redirect={parsed.redirect}")
        if over is not None:
            return over
        if not _is_domain(parsed.redirect):
            return Evaluation(Verdict.PERMERROR, f"redirect={parsed.redirect!r} is no valid domain")
        if isinstance(sender, Provider) and _same(parsed.redirect, sender.include):
            return Evaluation(Verdict.PASS, f"redirect={parsed.redirect} at {domain}")
        target = _check_host(lookups, parsed.redirect, sender, budget)
        if target.verdict is Verdict.NONE:
            return Evaluation(Verdict.PERMERROR, f"redirect={parsed.redirect}: {target.reason}")
        return target
    return Evaluation(Verdict.NEUTRAL, f"no term of {domain}'s record matches")


def _count(budget: _Budget, what: str) -> Evaluation | None:
    budget.terms += 1
    if budget.terms <= MAX_DNS_TERMS:
        return None
    reason = f"more than {MAX_DNS_TERMS} terms that query DNS (RFC 7208 §4.6.4), at {what!r}"
    return Evaluation(Verdict.PERMERROR, reason)


def _matches(
    lookups: Lookups, domain: str, sender: Sender, mechanism: Mechanism, budget: _Budget
) -> _Match:
    kind = mechanism.kind
    if kind == "all":
        return True
    if kind in ("ip4", "ip6"):
        return not isinstance(sender, Provider) and _in(sender, mechanism.network)
    over = _count(budget, mechanism.text)
    if over is not None:
        return over
    target = mechanism.domain or domain
    if "%" in target:
        return Evaluation(Verdict.UNKNOWN, f"{mechanism.text!r} uses SPF macros")
    if not _is_domain(target):
        return Evaluation(Verdict.PERMERROR, f"{mechanism.text!r} names no valid domain")
    if kind == "ptr":
        return Evaluation(Verdict.UNKNOWN, f"{mechanism.text!r} depends on reverse DNS")
    if kind == "include":
        return _include(lookups, target, sender, mechanism, budget)
    if isinstance(sender, Provider):
        return False  # a provider's addresses are unknown here: only its include names it
    if kind == "mx":
        return _mx(lookups, target, sender, mechanism, budget)
    found = _names(lookups.addresses(target), target, mechanism, budget)
    if isinstance(found, Evaluation):
        return found
    return bool(found) if kind == "exists" else _any_in(sender, found, mechanism)


def _mx(
    lookups: Lookups, target: str, sender: Address, mechanism: Mechanism, budget: _Budget
) -> _Match:
    hosts = _names(lookups.mx(target), target, mechanism, budget)
    if isinstance(hosts, Evaluation):
        return hosts
    if len(hosts) > MAX_MX_HOSTS:
        reason = f"{mechanism.text!r}: {target} has more than {MAX_MX_HOSTS} MX hosts"
        return Evaluation(Verdict.PERMERROR, reason)
    for host in filter(None, hosts):  # "": a null MX names no host
        found = lookups.addresses(host)
        if isinstance(found, Unreadable):
            reason = f"{mechanism.text!r}: {host}'s addresses could not be read: {found.reason}"
            return Evaluation(Verdict.TEMPERROR, reason)
        if isinstance(found, Found) and _any_in(sender, found.values, mechanism):
            return True
    return False


def _include(
    lookups: Lookups, target: str, sender: Sender, mechanism: Mechanism, budget: _Budget
) -> _Match:
    if isinstance(sender, Provider) and _same(target, sender.include):
        return True
    if target.lower() in budget.seen:
        return Evaluation(Verdict.PERMERROR, f"{mechanism.text!r} includes itself")
    budget.seen.add(target.lower())
    result = _check_host(lookups, target, sender, budget)
    budget.seen.discard(target.lower())
    match result.verdict:
        case Verdict.PASS:
            return True
        case Verdict.FAIL | Verdict.SOFTFAIL | Verdict.NEUTRAL:
            return False
        case Verdict.NONE:  # RFC 7208 §5.2: an include without a record is a permerror
            return Evaluation(Verdict.PERMERROR, f"{mechanism.text!r}: {result.reason}")
        case _:
            return Evaluation(result.verdict, f"{mechanism.text!r}: {result.reason}")


def _names(
    answer: Answer, target: str, mechanism: Mechanism, budget: _Budget
) -> tuple[str, ...] | Evaluation:
    if isinstance(answer, Unreadable):
        reason = f"{mechanism.text!r}: {target} could not be read: {answer.reason}"
        return Evaluation(Verdict.TEMPERROR, reason)
    if isinstance(answer, Found):
        return answer.values
    budget.voids += 1
    if budget.voids > MAX_VOID_LOOKUPS:
        reason = f"more than {MAX_VOID_LOOKUPS} look-ups found nothing (RFC 7208 §4.6.4): {target}"
        return Evaluation(Verdict.PERMERROR, reason)
    return ()


def _any_in(sender: Address, addresses: tuple[str, ...], mechanism: Mechanism) -> bool:
    for text in addresses:
        address = ipaddress.ip_address(text)
        bits = mechanism.cidr4 if address.version == 4 else mechanism.cidr6
        if _in(sender, ipaddress.ip_network(f"{address}/{bits}", strict=False)):
            return True
    return False


def _in(sender: Address, network: ipaddress.IPv4Network | ipaddress.IPv6Network | None) -> bool:
    if network is None:
        return False
    if isinstance(sender, ipaddress.IPv6Address) and sender.ipv4_mapped is not None:
        sender = sender.ipv4_mapped
    return sender.version == network.version and sender in network


def _is_domain(text: str) -> bool:
    """A name worth asking DNS about (RFC 7208 §4.8: a domain-spec that is not an FQDN is a
    permerror); labels may hold underscores (`_spf.google.com`)."""
    labels = text.removesuffix(".").split(".")
    return (
        text.isascii()
        and len(text) <= 253
        and len(labels) > 1
        and all(
            0 < len(label) <= 63 and label.isprintable() and " " not in label for label in labels
        )
    )


def _same(one: str, other: str) -> bool:
    return one.lower().rstrip(".") == other.lower().rstrip(".")
