"""MTA-STS (RFC 8461) as text: the `_mta-sts` TXT record and the policy file, parsed; which MX
host names a policy allows. Pure functions, no I/O.

Anything malformed is returned as a `Malformed` with the reason: RFC 8461 §3.1/§3.2 say such a
record or policy is as good as none, and the reason is what the log and the status show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MAX_AGE_LIMIT = 31557600  # RFC 8461 §3.2: about a year
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 §3.3: "SHOULD NOT ... more than 64 kilobytes"
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_DIGITS = re.compile(r"^[0-9]{1,10}$")
# A host name or "*." and one: letters, digits, hyphens and dots (A-labels), as RFC 8461 §3.2.
_PATTERN = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


class Mode(StrEnum):
    ENFORCE = "enforce"  # only matching MX hosts, only with verified TLS; else no delivery
    TESTING = "testing"  # deliver as without a policy; failures counted and logged
    NONE = "none"  # the domain withdrew its policy


@dataclass(frozen=True, slots=True)
class Malformed:
    """A record or policy that does not parse, and why (text made here, never the peer's)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy file."""

    mode: Mode
    max_age: int  # seconds the policy may be cached
    mx: tuple[
        str, ...
    ]  # patterns, lower case, without a final dot: "mx.example.com", "*.example.com"

    def allows(self, host: str) -> bool:
        """Whether MX host `host` matches one of the policy's `mx` patterns (RFC 8461 §4.1: a
        wildcard stands for exactly one leftmost label)."""
        name = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, dot, rest = name.partition(".")
                if dot and label and rest == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False


def parse_record(texts: tuple[str, ...]) -> str | Malformed | None:
    """The policy id from the TXT strings at `_mta-sts.<domain>` (each record's strings already
    joined); None when no record starts with `v=STSv1`.

    RFC 8461 §3.1: records not starting with `v=STSv1;` are ignored; more than one that does, or
    one that does not parse, means no policy is available.
    """
    records = [text for text in texts if re.match(r"^v=STSv1\s*(;|$)", text)]
    if not records:
        return None
    if len(records) > 1:
        return Malformed(f"{len(records)} _mta-sts TXT records start with v=STSv1, not one")
    found_id: str | None = None
    for part in records[0].split(";")[1:]:
        key, equals, value = part.strip().partition("=")
        if not key and not equals:
            continue  # the record may end with ";" and spaces
        if not equals or not key:
            return Malformed("_mta-sts TXT record has a field without '='")
        if key == "id" and found_id is None:
            found_id = value
    if found_id is None:
        return Malformed("_mta-sts TXT record has no id")
    if not _ID.match(found_id):
        return Malformed("_mta-sts TXT record's id is not 1 to 32 letters and digits")
    return found_id


def parse_policy(text: str) -> Policy | Malformed:
    """The policy file's fields (RFC 8461 §3.2): `version: STSv1`, `mode`, `max_age`, and one
    or more `mx` (none needed for mode `none`); unknown fields are ignored, and of a repeated
    field other than `mx` the first counts."""
    fields: dict[str, str] = {}
    patterns: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            return Malformed("a policy line has no ':'")
        key, value = key.strip().lower(), value.strip()
        if key == "mx":
            patterns.append(value.rstrip(".").lower())
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        return Malformed("policy version is not STSv1")
    try:
        mode = Mode(fields.get("mode", "").lower())
    except ValueError:
        return Malformed("policy mode is not enforce, testing or none")
    max_age = fields.get("max_age", "")
    if not _DIGITS.match(max_age):
        return Malformed("policy max_age is not a number of seconds")
    if int(max_age) > MAX_AGE_LIMIT:
        return Malformed(f"policy max_age is above {MAX_AGE_LIMIT}")
    bad = next((p for p in patterns if not _PATTERN.match(p)), None)
    if bad is not None:
        return Malformed("policy has an mx pattern that is not a host name or *.name")
    if not patterns and mode is not Mode.NONE:
        return Malformed(f"policy in mode {mode.value} names no mx")
    return Policy(mode, int(max_age), tuple(dict.fromkeys(patterns)))
