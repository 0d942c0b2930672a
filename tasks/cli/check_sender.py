"""`mailroom check --sender-domain D [--json]`: read D's SPF, DKIM, DMARC, MTA-STS and TLS-RPT
records through the configured resolver (DNS_NAMESERVERS, DNS_TIMEOUT) and print one line per
record with the fix when something is wrong or missing, then `OK` or `FAILED at RECORDS`.
Exit 0 when no record failed (warnings included), 1 when one did or could not be read, 2 for a
bad domain. Nothing else is contacted: no Redis, no SMTP, no HTTPS. What DNS sent is escaped and
bounded before it is printed (a hostile DNS server may send terminal escapes).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import dns.resolver
import idna

from settings import DeliveryMode, Settings
from settings.parsing import is_dns_name
from tasks.cli.errors import FAILED, OK, UsageError
from tasks.sender_domain.dkim_check import dkim_findings
from tasks.sender_domain.dns_reader import DnsReader
from tasks.sender_domain.findings import (
    Finding,
    Status,
    dmarc_finding,
    mta_sts_finding,
    tls_rpt_finding,
)
from tasks.sender_domain.spf_check import sends_from, spf_finding
from workers.model.reply import printable

_SHOWN_VALUE = 200  # characters of a record echoed on a human line
_MAX_FIELD = 4096  # characters of any JSON field (a DKIM fix holds an RSA-4096 key: ~740)
_STATUS_WORD = {
    Status.OK: "ok",
    Status.WARN: "WARN",
    Status.FAIL: "FAIL",
    Status.UNREADABLE: "FAIL",
}


def sender_domain(text: str) -> str:
    """The --sender-domain argument as a lower-case A-label, or UsageError naming the problem."""
    name = text.strip().lower().removesuffix(".")
    problem = f"check: --sender-domain {printable(text, 80)!r} is not a valid domain name"
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise UsageError(problem) from None
    if not is_dns_name(name) or "." not in name:
        raise UsageError(problem)
    return name


def run_sender_domain(args: argparse.Namespace, settings: Settings) -> int:
    """Check the records of --sender-domain and print them; 0 if none failed, else 1.

    :raises UsageError: a bad domain, or --domain, --send-to or --from given with it.
    """
    given = [o for o, v in (("--domain", args.domain), ("--send-to", args.send_to)) if v]
    if args.sender:
        given.append("--from")
    if given:
        raise UsageError(f"check: --sender-domain cannot be combined with {', '.join(given)}")
    domain = sender_domain(args.sender_domain)
    findings = sender_findings(settings, domain)
    failed = [f for f in findings if f.status.failed]
    if args.json:
        print(json.dumps(as_json(settings, domain, findings)))
    else:
        for line in as_lines(settings, findings):
            print(line)
    return FAILED if failed else OK


def sender_findings(settings: Settings, domain: str) -> list[Finding]:
    """Every record's finding, in report order: SPF, DKIM (one per key), DMARC, MTA-STS,
    TLS-RPT.

    :raises UsageError: DNS_NAMESERVERS is empty and the system has no resolver configuration.
    """
    nameservers = [(server.ip, server.port) for server in settings.dns_nameservers]
    try:
        reader = DnsReader(nameservers, settings.dns_timeout)
    except dns.resolver.NoResolverConfiguration:
        raise UsageError(
            "check: the system has no DNS resolver configured: set MAILROOM_DNS_NAMESERVERS"
        ) from None
    return [
        spf_finding(reader, domain, sends_from(settings, reader)),
        *dkim_findings(reader.txt, domain, settings.dkim_keys, settings.delivery),
        dmarc_finding(reader.txt, domain, settings.dkim_keys),
        mta_sts_finding(reader.txt, domain),
        tls_rpt_finding(reader.txt, domain),
    ]


def as_lines(settings: Settings, findings: list[Finding]) -> list[str]:
    """One line per record, then `OK` or `FAILED at` the records that failed."""
    lines = [f"{'settings':<12} ok    {_mode(settings)}"]
    for finding in findings:
        line = f"{finding.record:<12} {_STATUS_WORD[finding.status]:<5} {finding.name}: "
        line += finding.detail
        if finding.value is not None and finding.status is not Status.OK:
            line += f'; found "{printable(finding.value, _SHOWN_VALUE)}"'
        if finding.fix is not None:
            line += f"; to fix: {finding.fix}"
        lines.append(printable(line, _MAX_FIELD))
    failed = dict.fromkeys(f.record for f in findings if f.status.failed)
    return [*lines, f"FAILED at {', '.join(failed)}" if failed else "OK"]


def as_json(settings: Settings, domain: str, findings: list[Finding]) -> dict[str, Any]:
    """The report as `--json` prints it: ok, domain, settings, records."""
    return {
        "ok": not any(f.status.failed for f in findings),
        "domain": domain,
        "settings": {"ok": True, "delivery": settings.delivery.value, "helo": settings.helo_name},
        "records": [
            {
                "record": f.record,
                "name": printable(f.name, _MAX_FIELD),
                "status": f.status.value,
                "detail": printable(f.detail, _MAX_FIELD),
                "fix": None if f.fix is None else printable(f.fix, _MAX_FIELD),
                "value": None if f.value is None else printable(f.value, _MAX_FIELD),
            }
            for f in findings
        ],
    }


def _mode(settings: Settings) -> str:
    mode = settings.delivery.value
    if settings.delivery is DeliveryMode.RELAY:
        mode += f" {settings.relay_host} (profile {settings.relay_profile.value})"
    return f"delivery={mode} helo={settings.helo_name}"
