"""The DKIM lines of the sender-domain check: for each key of DKIM_KEYS that signs mail From the
domain, its TXT record at `<selector>._domainkey.<domain>` is there, one only, `v=DKIM1`, with the
key type (k=) and the very public key (p=, compared as decoded bytes) of the configured key file.
A domain without a key gets one line saying its mail goes out unsigned.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence

from settings import DeliveryMode
from settings.dkim import DkimKey
from tasks.dkim.keys import DkimKeyError, SigningKey, load_signing_key
from tasks.sender_domain.dns_reader import Answer, Found, Unreadable
from tasks.sender_domain.findings import Finding, Status, unreadable
from tasks.sender_domain.records import Malformed, parse_dkim_record


def dkim_findings(
    txt: Callable[[str], Answer],
    domain: str,
    keys: Sequence[DkimKey],
    delivery: DeliveryMode,
) -> list[Finding]:
    """One finding per configured key that signs mail From `domain`, or one saying none does."""
    signing = [key for key in keys if key.signs_for(domain)]
    if not signing:
        return [_unsigned(domain, delivery)]
    findings = []
    for key in signing:
        try:
            loaded = load_signing_key(key)
        except DkimKeyError as exc:  # one line naming the entry and the file, never the key
            findings.append(
                Finding(
                    "dkim",
                    key.record_name,
                    Status.FAIL,
                    # The problem names the record again: the line names it once.
                    exc.problem.removeprefix(f"{key.record_name}: "),
                    "fix DKIM_KEYS or the key file",
                )
            )
            continue
        findings.append(_key_finding(txt, loaded))
    return findings


def _unsigned(domain: str, delivery: DeliveryMode) -> Finding:
    example = (
        f'[{{"domain": "{domain}", "selector": "s2026", "key_file": "/run/secrets/dkim.pem"}}]'
    )
    fix = f"set MAILROOM_DKIM_KEYS='{example}' and publish the record this check then prints"
    if delivery is DeliveryMode.RELAY:
        return Finding(
            "dkim",
            f"*._domainkey.{domain}",
            Status.WARN,
            f"no key in DKIM_KEYS signs mail From {domain}: Mailroom sends it unsigned "
            "(the relay may sign it: see its DKIM settings)",
            fix,
        )
    return Finding(
        "dkim",
        f"*._domainkey.{domain}",
        Status.FAIL,
        f"no key in DKIM_KEYS signs mail From {domain}: it is sent unsigned",
        fix,
    )


def _key_finding(txt: Callable[[str], Answer], key: SigningKey) -> Finding:
    name = key.config.record_name
    wanted = f"v=DKIM1; k={key.key_type}; p={key.public_record}"
    publish = f'publish TXT "{wanted}" at {name}'
    answer = txt(name)
    if isinstance(answer, Unreadable):
        return unreadable("dkim", name, answer)
    found = answer.values if isinstance(answer, Found) else ()
    if not found:
        return Finding(
            "dkim",
            name,
            Status.FAIL,
            f"no record for the {key.key_type} key of selector {key.config.selector}: "
            "receivers cannot verify the signature",
            publish,
        )
    if len(found) > 1:
        return Finding(
            "dkim",
            name,
            Status.FAIL,
            f"{len(found)} TXT records: receivers may pick any of them",
            f"keep only one: {wanted}",
        )
    [text] = found
    parsed = parse_dkim_record(text)
    if isinstance(parsed, Malformed):
        problem = f"the record is malformed: {parsed.reason}"
    elif parsed.key_type != key.key_type:
        problem = f"k={parsed.key_type}, but the key file holds an {key.key_type} key"
    elif not parsed.public_key:
        problem = "the key is revoked (empty p=)"
    elif parsed.public_key != base64.b64decode(key.public_record):
        problem = "p= is a different public key than the key file's: signatures will not verify"
    else:
        if parsed.testing:
            return Finding(
                "dkim",
                name,
                Status.WARN,
                f"{key.key_type} key matches, but t=y: receivers treat signatures as a test",
                f"remove t=y: {wanted}",
                text,
            )
        return Finding(
            "dkim", name, Status.OK, f"{key.key_type} key matches the key file", None, text
        )
    return Finding("dkim", name, Status.FAIL, problem, publish, text)
