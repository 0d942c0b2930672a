"""What the sender-domain check found, one `Finding` per record, and the checks of the policy
records: DMARC (RFC 7489), MTA-STS (RFC 8461, the TXT record only) and TLS-RPT (RFC 8460).
SPF and DKIM have their own modules (spf_check.py, dkim_check.py).

A finding's texts may hold what a DNS server sent: the report escapes and bounds them when it
prints (`tasks.cli.check_sender`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from settings.dkim import DkimKey
from tasks.sender_domain.dns_reader import Answer, Found, Unreadable
from tasks.sender_domain.records import (
    Malformed,
    is_dmarc,
    is_sts,
    is_tlsrpt,
    parse_dmarc_record,
    parse_sts_record,
    parse_tlsrpt_record,
)


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but weaker than it could be (p=none, no MTA-STS, cannot be known)
    FAIL = "fail"  # missing or wrong: receivers will treat the mail worse
    UNREADABLE = "unreadable"  # DNS gave no answer (SERVFAIL, timeout): not the same as missing

    @property
    def failed(self) -> bool:
        return self in (Status.FAIL, Status.UNREADABLE)


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: the record (`spf`, `dkim`, `dmarc`, `mta-sts`, `tls-rpt`), the
    DNS name read, the verdict, what was found, and the fix when something is wrong."""

    record: str
    name: str
    status: Status
    detail: str
    fix: str | None = None
    value: str | None = None  # the record as published (its strings joined)


def unreadable(record: str, name: str, answer: Unreadable) -> Finding:
    """The finding for a record whose look-up failed: it may well exist."""
    return Finding(record, name, Status.UNREADABLE, f"could not be read: {answer.reason}")


def records_of(answer: Answer, accepts: Callable[[str], bool]) -> list[str]:
    """The TXT records of an answer that `accepts` (other TXT records at a name are not ours)."""
    return [text for text in answer.values if accepts(text)] if isinstance(answer, Found) else []


def dmarc_finding(txt: Callable[[str], Answer], domain: str, keys: Sequence[DkimKey]) -> Finding:
    """`_dmarc.<domain>`, or the nearest parent's record (whose sp= applies to subdomains):
    present, one only, its policy, and alignment hints for the configured DKIM keys."""
    own = f"_dmarc.{domain}"
    labels = domain.split(".")
    for start in range(len(labels) - 1):  # never a top-level domain alone
        name = "_dmarc." + ".".join(labels[start:])
        answer = txt(name)
        if isinstance(answer, Unreadable):
            return unreadable("dmarc", name, answer)
        found = records_of(answer, is_dmarc)
        if len(found) > 1:
            return Finding(
                "dmarc",
                name,
                Status.FAIL,
                f"{len(found)} DMARC records: receivers apply none of them (RFC 7489 §6.6.3)",
                "keep exactly one v=DMARC1 record",
            )
        if found:
            return _dmarc(name, found[0], domain, inherited=start > 0, keys=keys)
    return Finding(
        "dmarc",
        own,
        Status.FAIL,
        "no DMARC record: receivers such as Gmail and Outlook.com require one from bulk senders",
        f'publish TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}" at {own}, then '
        "p=quarantine or p=reject once the reports show SPF and DKIM passing",
    )


def _dmarc(
    name: str, text: str, domain: str, *, inherited: bool, keys: Sequence[DkimKey]
) -> Finding:
    parsed = parse_dmarc_record(text)
    if isinstance(parsed, Malformed):
        return Finding(
            "dmarc",
            name,
            Status.FAIL,
            f"the record is malformed: {parsed.reason}",
            "correct the record (RFC 7489 §6.3)",
            text,
        )
    policy = parsed.policy
    if inherited and parsed.subdomain_policy is not None:
        policy = parsed.subdomain_policy
    where = f" (the record of a parent domain applies to {domain})" if inherited else ""
    hints = []
    if parsed.percent < 100:
        hints.append(
            f"pct={parsed.percent}: the policy applies to {parsed.percent}% of failing mail"
        )
    if not parsed.rua:
        hints.append("no rua=: no aggregate reports come back to show what fails")
    if parsed.adkim == "s" and any(k.signs_for(domain) and k.domain != domain for k in keys):
        hints.append(
            f"adkim=s: a key of a parent domain (d=) does not align with {domain}; "
            f"give {domain} a key of its own in DKIM_KEYS"
        )
    if parsed.aspf == "s":
        hints.append(f"aspf=s: SPF aligns only for an envelope sender exactly @{domain}")
    detail = f"p={policy}{where}" + "".join(f"; {hint}" for hint in hints)
    if policy == "none":
        return Finding(
            "dmarc",
            name,
            Status.WARN,
            f"{detail}; monitoring only: receivers act on no failure",
            "once the reports show SPF and DKIM passing, move to p=quarantine, then p=reject",
            text,
        )
    return Finding("dmarc", name, Status.OK, detail, None, text)


def mta_sts_finding(txt: Callable[[str], Answer], domain: str) -> Finding:
    """`_mta-sts.<domain>`: one `v=STSv1; id=…` record (the HTTPS policy is not fetched here)."""
    name = f"_mta-sts.{domain}"
    answer = txt(name)
    if isinstance(answer, Unreadable):
        return unreadable("mta-sts", name, answer)
    found = records_of(answer, is_sts)
    policy_url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
    if not found:
        return Finding(
            "mta-sts",
            name,
            Status.WARN,
            f"no MTA-STS record: mail to {domain} may be sent without verified TLS",
            f'publish TXT "v=STSv1; id=20260101" at {name} and the policy at {policy_url}',
        )
    if len(found) > 1:
        return Finding(
            "mta-sts",
            name,
            Status.FAIL,
            f"{len(found)} MTA-STS records: senders ignore them all (RFC 8461 §3.1)",
            "keep exactly one v=STSv1 record",
        )
    parsed = parse_sts_record(found[0])
    if isinstance(parsed, Malformed):
        return Finding(
            "mta-sts",
            name,
            Status.FAIL,
            f"the record is malformed: {parsed.reason}",
            'publish "v=STSv1; id=<1 to 32 letters and digits>"',
            found[0],
        )
    return Finding(
        "mta-sts",
        name,
        Status.OK,
        f"id={parsed} (the policy at {policy_url} is not fetched)",
        None,
        found[0],
    )


def tls_rpt_finding(txt: Callable[[str], Answer], domain: str) -> Finding:
    """`_smtp._tls.<domain>`: one `v=TLSRPTv1; rua=…` record."""
    name = f"_smtp._tls.{domain}"
    answer = txt(name)
    if isinstance(answer, Unreadable):
        return unreadable("tls-rpt", name, answer)
    found = records_of(answer, is_tlsrpt)
    if not found:
        return Finding(
            "tls-rpt",
            name,
            Status.WARN,
            "no TLS-RPT record: nobody reports failed TLS connections to you",
            f'publish TXT "v=TLSRPTv1; rua=mailto:tls-reports@{domain}" at {name}',
        )
    if len(found) > 1:
        return Finding(
            "tls-rpt",
            name,
            Status.FAIL,
            f"{len(found)} TLS-RPT records: senders ignore them all (RFC 8460 §3)",
            "keep exactly one v=TLSRPTv1 record",
        )
    parsed = parse_tlsrpt_record(found[0])
    if isinstance(parsed, Malformed):
        return Finding(
            "tls-rpt",
            name,
            Status.FAIL,
            f"the record is malformed: {parsed.reason}",
            f'publish "v=TLSRPTv1; rua=mailto:tls-reports@{domain}"',
            found[0],
        )
    return Finding("tls-rpt", name, Status.OK, f"rua={','.join(parsed)}", None, found[0])
