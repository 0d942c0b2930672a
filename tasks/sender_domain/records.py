"""Pure parsers of the tag-list TXT records a sender domain publishes: DKIM keys (RFC 6376 §3.6.1),
DMARC (RFC 7489 §6.3), MTA-STS (RFC 8461 §3.1) and TLS-RPT (RFC 8460 §3). Each returns the record
or a `Malformed` saying what is wrong; nothing here raises for bad input or touches the network.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_STS_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True, slots=True)
class Malformed:
    """A record that does not parse; `reason` is one line, free of the record's bytes."""

    reason: str


def parse_tags(text: str) -> dict[str, str] | Malformed:
    """RFC 6376 §3.2 tag=value pairs separated by `;` (a trailing `;` allowed), whitespace around
    names and values dropped; tag names are kept as written. A repeated tag is malformed."""
    tags: dict[str, str] = {}
    specs = text.split(";")
    if specs and not specs[-1].strip():
        specs.pop()
    for spec in specs:
        name, equals, value = spec.partition("=")
        name = name.strip()
        if not equals or not _TAG_NAME.fullmatch(name):
            return Malformed("a part is not tag=value")
        if name in tags:
            return Malformed(f"tag {name}= is given twice")
        tags[name] = value.strip()
    return tags


@dataclass(frozen=True, slots=True)
class DkimRecord:
    """A DKIM key record: `k=` (default rsa) and the decoded `p=` (empty: the key is revoked)."""

    version: str | None
    key_type: str
    public_key: bytes
    testing: bool  # t=y: receivers treat signatures as unsigned


def parse_dkim_record(text: str) -> DkimRecord | Malformed:
    """A `<selector>._domainkey` TXT record (its strings already joined)."""
    tags = parse_tags(text)
    if isinstance(tags, Malformed):
        return tags
    version = tags.get("v")
    if version is not None and (version != "DKIM1" or next(iter(tags)) != "v"):
        return Malformed("v= must be the first tag and read DKIM1")
    if "p" not in tags:
        return Malformed("it has no p= (public key) tag")
    # FWS may appear inside base64 (RFC 6376 §3.6.1), and TXT strings may split it anywhere.
    key = "".join(tags["p"].split())
    try:
        public_key = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return Malformed("p= is not valid base64")
    flags = [flag.strip() for flag in tags.get("t", "").split(":")]
    return DkimRecord(version, tags.get("k", "rsa").lower(), public_key, "y" in flags)


def is_dmarc(text: str) -> bool:
    """Whether a `_dmarc` TXT record is a DMARC record at all (RFC 7489 §6.6.3: it starts with
    `v=DMARC1`; any other TXT record there is ignored)."""
    return re.match(r"v\s*=\s*DMARC1\s*(;|$)", text) is not None


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """The tags of a DMARC record that say what receivers do and how identifiers must align."""

    policy: str  # p=: none, quarantine or reject
    subdomain_policy: str | None  # sp=
    adkim: str  # "r" relaxed or "s" strict
    aspf: str
    percent: int  # pct=
    rua: tuple[str, ...]


def parse_dmarc_record(text: str) -> DmarcRecord | Malformed:
    """A `_dmarc` TXT record that `is_dmarc`."""
    tags = parse_tags(text)
    if isinstance(tags, Malformed):
        return tags
    tags = {name.lower(): value for name, value in tags.items()}
    policy = tags.get("p", "").lower()
    if policy not in _POLICIES:
        return Malformed("p= must be none, quarantine or reject")
    subdomain_policy = tags.get("sp", "").lower() or None
    if subdomain_policy is not None and subdomain_policy not in _POLICIES:
        return Malformed("sp= must be none, quarantine or reject")
    alignment = {name: tags.get(name, "r").lower() for name in ("adkim", "aspf")}
    for name, mode in alignment.items():
        if mode not in ("r", "s"):
            return Malformed(f"{name}= must be r or s")
    percent = tags.get("pct", "100")
    if not (percent.isascii() and percent.isdigit() and int(percent) <= 100):
        return Malformed("pct= must be a whole number from 0 to 100")
    rua = tuple(uri.strip() for uri in tags.get("rua", "").split(",") if uri.strip())
    return DmarcRecord(
        policy, subdomain_policy, alignment["adkim"], alignment["aspf"], int(percent), rua
    )


def is_sts(text: str) -> bool:
    """Whether an `_mta-sts` TXT record is an MTA-STS record (RFC 8461 §3.1: `v=STSv1` first)."""
    return re.match(r"v=STSv1\s*(;|$)", text) is not None


def parse_sts_record(text: str) -> str | Malformed:
    """The policy `id=` of an `_mta-sts` TXT record that `is_sts`."""
    tags = parse_tags(text)
    if isinstance(tags, Malformed):
        return tags
    policy_id = tags.get("id")
    if policy_id is None:
        return Malformed("it has no id= tag")
    if not _STS_ID.fullmatch(policy_id):
        return Malformed("id= must be 1 to 32 letters and digits")
    return policy_id


def is_tlsrpt(text: str) -> bool:
    """Whether an `_smtp._tls` TXT record is a TLS-RPT record (RFC 8460 §3: `v=TLSRPTv1` first)."""
    return re.match(r"v=TLSRPTv1\s*(;|$)", text) is not None


def parse_tlsrpt_record(text: str) -> tuple[str, ...] | Malformed:
    """The report addresses (`rua=`, mailto: or https: URIs) of a record that `is_tlsrpt`."""
    tags = parse_tags(text)
    if isinstance(tags, Malformed):
        return tags
    rua = tuple(uri.strip() for uri in tags.get("rua", "").split(",") if uri.strip())
    if not rua:
        return Malformed("it has no rua= (where reports go)")
    if not all(uri.lower().startswith(("mailto:", "https://")) for uri in rua):
        return Malformed("every rua= address must be a mailto: or https:// URI")
    return rua
