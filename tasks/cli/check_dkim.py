"""The DKIM line of `mailroom check`: which From domains the configured keys sign, and whether
the check's own From domain is one of them (its message is signed as any other)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.dkim.keys import SigningKey, keys_for


def dkim_line(keys: Sequence[SigningKey], sender_domain: str) -> str:
    """One line: `dkim  none|ok  …` naming the signed From domains and the check's own."""
    if not keys:
        return f"{'dkim':<12} none  no DKIM_KEYS: mail From every domain goes out unsigned"
    signed = ", ".join(_domain_text(domain, ks) for domain, ks in _by_domain(keys).items())
    return f"{'dkim':<12} ok    signs From {signed}; {_verdict(keys, sender_domain)}"


def dkim_json(keys: Sequence[SigningKey], sender_domain: str) -> dict[str, Any]:
    """The same as `--json` prints it."""
    return {
        "keys": [
            {
                "domain": key.config.domain,
                "selector": key.config.selector,
                "algorithm": key.algorithm,
                "subdomains": key.config.subdomains,
            }
            for key in keys
        ],
        "sender_domain": sender_domain,
        "sender_signed": bool(keys_for(keys, sender_domain)),
    }


def _by_domain(keys: Sequence[SigningKey]) -> dict[str, list[SigningKey]]:
    found: dict[str, list[SigningKey]] = {}
    for key in keys:
        found.setdefault(key.config.domain, []).append(key)
    return found


def _domain_text(domain: str, keys: Sequence[SigningKey]) -> str:
    under = " and its subdomains" if any(key.config.subdomains for key in keys) else ""
    selectors = ", ".join(f"s={key.config.selector} {key.algorithm}" for key in keys)
    return f"{domain}{under} ({selectors})"


def _verdict(keys: Sequence[SigningKey], sender_domain: str) -> str:
    if keys_for(keys, sender_domain):
        return f"this check's From {sender_domain} is signed"
    return f"this check's From {sender_domain} has no key: its mail goes out unsigned"
