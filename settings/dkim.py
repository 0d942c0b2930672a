"""MAILROOM_DKIM_KEYS: the keys messages are signed with (DKIM, RFC 6376 and RFC 8463).

A JSON list of objects: `{"domain": "example.com", "selector": "s2026", "key_file": "…"}`, and
optionally `"subdomains": true` (the key also signs mail whose From domain is under the domain,
with `d=` the domain itself, which DMARC's relaxed alignment accepts). Two entries for one domain
give two signatures: RSA and Ed25519 side by side, or an old and a new selector while rotating.
Pure parsing: the key files are read at start-up (`tasks.dkim.keys`), never here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import idna

from settings.parsing import is_dns_name, json_value, list_entry

_FIELDS = frozenset({"domain", "selector", "key_file", "subdomains"})
_REQUIRED = ("domain", "selector", "key_file")


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One configured signing key: where it is, and which From domains it signs for."""

    domain: str  # lower-case A-label
    selector: str  # lower-case; DNS labels, published at <selector>._domainkey.<domain>
    key_file: Path
    subdomains: bool = False

    @property
    def record_name(self) -> str:
        """The DNS name of the key's public record."""
        return f"{self.selector}._domainkey.{self.domain}"

    def signs_for(self, domain: str) -> bool:
        """Whether mail From `domain` (a lower-case A-label) is signed with this key."""
        return domain == self.domain or (self.subdomains and domain.endswith("." + self.domain))


def parse_dkim_keys(text: str) -> tuple[DkimKey, ...]:
    """The keys of MAILROOM_DKIM_KEYS; ValueError naming the first problem.

    An empty text is no keys (nothing is signed).
    """
    if not text.strip():
        return ()
    return dkim_keys_from_list(json_value(text, "a JSON list"))


def dkim_keys_from_list(value: Any) -> tuple[DkimKey, ...]:
    """The keys of an already decoded list of objects (settings given in code)."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a JSON list of objects (got {str(value)[:80]!r})")
    keys = tuple(_key(index, item) for index, item in enumerate(value))
    seen: set[tuple[str, str]] = set()
    for key in keys:
        if (key.domain, key.selector) in seen:
            raise ValueError(f"selector {key.selector!r} of {key.domain} is given twice")
        seen.add((key.domain, key.selector))
    return keys


def _key(index: int, item: Any) -> DkimKey:
    if isinstance(item, DkimKey):
        return item
    where = list_entry(index, item, _FIELDS, "domain, selector and key_file")
    for name in _REQUIRED:
        if not isinstance(item.get(name), str) or not item[name].strip():
            raise ValueError(f"{where} needs {name} as a non-empty string")
    subdomains = item.get("subdomains", False)
    if not isinstance(subdomains, bool):
        raise ValueError(f"{where}: subdomains must be true or false")
    return DkimKey(
        domain=_domain(where, item["domain"]),
        selector=_selector(where, item["selector"]),
        key_file=Path(item["key_file"].strip()),
        subdomains=subdomains,
    )


def _domain(where: str, text: str) -> str:
    name = text.strip().lower().removesuffix(".")
    try:
        name = idna.encode(name, uts46=True).decode("ascii") if not name.isascii() else name
    except idna.IDNAError:
        raise ValueError(f"{where}: domain {text[:80]!r} is not a valid DNS name") from None
    if not is_dns_name(name) or "." not in name:
        raise ValueError(f"{where}: domain {text[:80]!r} is not a valid DNS name")
    return name


def _selector(where: str, text: str) -> str:
    # RFC 6376 §3.1: a selector is a sub-domain (dot-separated labels) of ASCII letters, digits
    # and hyphens; it becomes part of a DNS name, so nothing else may pass.
    selector = text.strip().lower()
    if not is_dns_name(selector):
        raise ValueError(f"{where}: selector {text[:80]!r} must be DNS labels (a-z, 0-9, -)")
    return selector
