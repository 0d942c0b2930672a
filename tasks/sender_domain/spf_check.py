"""The SPF line of the sender-domain check: one `v=spf1` record at the domain, and whether it
authorises what this deployment sends from, as far as Mailroom can know without asking anyone
outside: the relay's provider (RELAY_PROFILE), the relay host's addresses, or in MX mode the
addresses HELO_NAME resolves to. Mailroom never contacts an outside service to learn its public
address, so a host whose name resolves to a private (NATed) address cannot be judged.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from settings import DeliveryMode, RelayProfile, Settings
from tasks.sender_domain.dns_reader import Found, Unreadable
from tasks.sender_domain.findings import Finding, Status, records_of, unreadable
from tasks.sender_domain.records import Malformed
from tasks.sender_domain.spf import Lookups, Provider, Sender, Verdict, evaluate
from tasks.sender_domain.spf_terms import Qualifier, is_spf, parse_spf

# The include each provider's customers publish (Microsoft's and Google's own documentation).
PROVIDERS = {
    RelayProfile.OFFICE365: Provider("Office 365", "spf.protection.outlook.com"),
    RelayProfile.GOOGLE: Provider("Google Workspace", "_spf.google.com"),
}

# Behind these, mail leaves through a NAT whose public address Mailroom cannot see.
_PRIVATE = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


@dataclass(frozen=True, slots=True)
class SendsFrom:
    """What mail From the domain leaves through, as SPF sees it."""

    what: str  # for the report: "this host (HELO_NAME mail.example.com)"
    senders: tuple[Sender, ...]
    unknown: str | None = None  # why whether SPF authorises it cannot be known
    term: str = "ip4:<your public address>"  # the SPF term that would authorise it


def sends_from(settings: Settings, lookups: Lookups) -> SendsFrom:
    """The relay's provider or addresses (relay mode), or HELO_NAME's addresses (MX mode)."""
    if settings.delivery is DeliveryMode.RELAY:
        provider = PROVIDERS.get(settings.relay_profile)
        if provider is not None:
            what = f"{provider.name} (RELAY_PROFILE={settings.relay_profile.value})"
            return SendsFrom(what, (provider,), term=f"include:{provider.include}")
        host = settings.relay_host or ""
        return _addresses_of(lookups, host, f"the relay {host} (RELAY_HOST)")
    helo = settings.helo_name
    what = f"this host (HELO_NAME {helo})"
    if helo.startswith("["):
        address = ipaddress.ip_address(helo[1:-1].removeprefix("IPv6:"))
        return _judged(what, (address,))
    return _addresses_of(lookups, helo, what)


def _addresses_of(lookups: Lookups, host: str, what: str) -> SendsFrom:
    found = lookups.addresses(host)
    if isinstance(found, Unreadable):
        return SendsFrom(what, (), f"the addresses of {host} could not be read: {found.reason}")
    if not isinstance(found, Found):
        return SendsFrom(what, (), f"{host} has no A or AAAA record")
    return _judged(what, tuple(ipaddress.ip_address(text) for text in found.values))


def _judged(
    what: str, addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
) -> SendsFrom:
    public = tuple(
        a for a in addresses if not any(a in net for net in _PRIVATE if a.version == net.version)
    )
    if not public:
        shown = ", ".join(map(str, addresses))
        return SendsFrom(
            what,
            (),
            f"{shown} {'is a private address' if len(addresses) == 1 else 'are private addresses'}"
            ": mail leaves through a NAT or another relay whose public address Mailroom does not "
            "know (it asks no outside service)",
        )
    terms = " ".join(f"ip{a.version}:{a}" for a in public)
    shown = ", ".join(map(str, public))
    return SendsFrom(f"{what}, {shown}", public, term=terms)


def spf_finding(lookups: Lookups, domain: str, sends: SendsFrom) -> Finding:
    """The domain's one SPF record, and its verdict for every sender of `sends`."""
    answer = lookups.txt(domain)
    if isinstance(answer, Unreadable):
        return unreadable("spf", domain, answer)
    found = records_of(answer, is_spf)
    if not found:
        return Finding(
            "spf",
            domain,
            Status.FAIL,
            f"no SPF record: receivers cannot tell which servers may send for {domain}",
            f'publish TXT "v=spf1 {sends.term} ~all" at {domain}',
        )
    if len(found) > 1:
        return Finding(
            "spf",
            domain,
            Status.FAIL,
            f"{len(found)} SPF records: receivers treat that as an error and SPF fails "
            "(RFC 7208 §4.5)",
            "merge them into one v=spf1 record",
        )
    [record] = found
    parsed = parse_spf(record)
    if isinstance(parsed, Malformed):
        return Finding(
            "spf",
            domain,
            Status.FAIL,
            f"the record is malformed: {parsed.reason}",
            "correct the record (RFC 7208 §4.6)",
            record,
        )
    if any(m.kind == "all" and m.qualifier is Qualifier.PASS for m in parsed.mechanisms):
        return Finding(
            "spf",
            domain,
            Status.FAIL,
            f"it ends in +all: it authorises every server on the internet to send as {domain}",
            f"end it in ~all or -all, with {sends.term} before",
            record,
        )
    if sends.unknown is not None:
        return Finding(
            "spf",
            domain,
            Status.WARN,
            f"present; whether it authorises {sends.what} cannot be known: {sends.unknown}",
            f"make sure it names the public address mail leaves from ({sends.term})",
            record,
        )
    return _verdict(lookups, domain, sends, record)


def _verdict(lookups: Lookups, domain: str, sends: SendsFrom, record: str) -> Finding:
    results = [evaluate(lookups, domain, sender, record) for sender in sends.senders]
    problems = [r for r in results if r.verdict is not Verdict.PASS]
    if not problems:
        reasons = ", ".join(dict.fromkeys(r.reason for r in results))
        return Finding(
            "spf", domain, Status.OK, f"authorises {sends.what} (pass by {reasons})", None, record
        )
    worst = problems[0]
    fix: str | None
    match worst.verdict:
        case Verdict.UNKNOWN:
            status, fix = Status.WARN, f"to be sure, add {sends.term} before that term"
            detail = f"whether it authorises {sends.what} cannot be known: {worst.reason}"
        case Verdict.TEMPERROR:
            status, fix = Status.UNREADABLE, None
            detail = f"could not be evaluated for {sends.what}: {worst.reason}"
        case Verdict.PERMERROR:
            status, fix = Status.FAIL, "correct the record (RFC 7208)"
            detail = f"is in error for {sends.what}: {worst.reason}"
        case _:
            status, fix = Status.FAIL, f"add {sends.term} before the record's all"
            detail = f"does not authorise {sends.what} ({worst.verdict.value} by {worst.reason})"
    return Finding("spf", domain, status, detail, fix, record)
