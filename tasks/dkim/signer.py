"""Adding DKIM-Signature fields to a built message (RFC 6376; RFC 8463 for Ed25519).

A message is signed once, when it is built or received (`tasks.api.Mailroom`), never per
destination or attempt: the signed bytes are what the claim check stores. The keys are those
whose domain signs for the message's From domain (`tasks.dkim.keys.keys_for`); each gives one
signature, so two keys for a domain (RSA and Ed25519, or old and new selector) give two. A
message whose From domain has no key, or with no single From domain, is left as it is.

The signature: `c=relaxed/relaxed`, the body hashed whole (no `l=`), `t=` but no expiry, and
`h=` naming the fields readers and receivers act on when present (SIGNED_FIELDS), each as often
as it occurs, with From once more than it occurs (RFC 6376 §8.15: a From added later breaks the
signature instead of being shown). A producer's other extra headers (X-*) are not signed: no
receiver policy reads them, and relays and list software rewrite such fields. A key whose
selector already signed the message (a submission client that signs for itself) adds nothing.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from email.utils import getaddresses

import idna
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding

from tasks.dkim.canonical import HeaderField, relaxed_body, relaxed_header, split_message
from tasks.dkim.keys import SigningKey, keys_for
from workers.model.envelope import OutboundMessage

# Lower-case, in the order h= lists them; List-Unsubscribe(-Post) per RFC 8058 §4.
SIGNED_FIELDS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
FIELD_NAME = "DKIM-Signature"
_FOLD_AT = 78  # RFC 5322 §2.1.1
_SIMPLE_DOMAIN = re.compile(r"@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)>?[ \t]*\Z")


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs messages with `keys` (loaded once per process by `tasks.dkim.keys`)."""

    keys: tuple[SigningKey, ...]

    def signs_for(self, domain: str) -> bool:
        """Whether mail From `domain` (a lower-case A-label) is signed."""
        return bool(keys_for(self.keys, domain))

    def sign_message(self, message: OutboundMessage) -> OutboundMessage:
        """`message` with its signatures, or `message` itself when none applies."""
        if not self.keys:
            return message
        data = self.sign(message.data)
        return message if data is message.data else replace(message, data=data)

    def sign(self, data: bytes, *, now: float | None = None) -> bytes:
        """`data` (an RFC 5322 message with CRLF line breaks) with one DKIM-Signature field per
        key of its From domain before it; `data` itself when no key applies.

        `now` (default: the current time) gives `t=`.
        """
        if not self.keys:
            return data
        fields, body = split_message(data)
        domain = from_domain(fields)
        ours = _signed_already(fields)
        keys = [
            key
            for key in (keys_for(self.keys, domain) if domain else [])
            if (key.config.domain, key.config.selector) not in ours
        ]
        if not keys:
            return data
        names = _names_to_sign(fields)
        signed_head = _canonical_fields(fields, names)
        body_hash = _b64(hashlib.sha256(relaxed_body(body)).digest())
        stamp = int(time.time() if now is None else now)
        added = [_signature(key, names, signed_head, body_hash, stamp) for key in keys]
        return b"".join(added) + data


def from_domain(fields: Sequence[HeaderField]) -> str | None:
    """The domain (lower-case A-label) of the one From field's address(es); None when there is
    no From, more than one, or its addresses name different domains (DMARC refuses those too)."""
    found = [field for field in fields if field.key == "from"]
    if len(found) != 1:
        return None
    try:
        value = found[0].raw.partition(b":")[2].replace(b"\r\n", b"").decode("utf-8")
    except UnicodeDecodeError:
        return None
    if value.count("@") == 1 and "," not in value and "(" not in value:
        # One address, no comment: the domain ends the field (`Name <a@domain>`), which spares
        # the stdlib's parser (a third of the signer's own time). Anything else is parsed.
        simple = _SIMPLE_DOMAIN.search(value)
        if simple:
            return simple[1].lower()
    domains = {address.rpartition("@")[2].lower() for _, address in getaddresses([value])}
    if len(domains) != 1:
        return None
    [domain] = domains
    if not domain or domain.isascii():
        return domain or None
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return None


def _signed_already(fields: Sequence[HeaderField]) -> set[tuple[str, str]]:
    """(d=, s=) of the DKIM-Signature fields the message carries."""
    found = set()
    for field in fields:
        if field.key == FIELD_NAME.lower():
            value = field.raw.partition(b":")[2].decode("ascii", "replace")
            tags = {
                name.strip(): "".join(text.split()).lower()
                for name, _, text in (tag.partition("=") for tag in value.split(";"))
            }
            found.add((tags.get("d", ""), tags.get("s", "")))
    return found


def _names_to_sign(fields: Sequence[HeaderField]) -> list[str]:
    counts = dict.fromkeys(SIGNED_FIELDS, 0)
    for field in fields:
        if field.key in counts:
            counts[field.key] += 1
    counts["from"] += 1  # oversigned: RFC 6376 §8.15
    return [name for name in SIGNED_FIELDS for _ in range(counts[name])]


def _canonical_fields(fields: Sequence[HeaderField], names: Sequence[str]) -> bytes:
    """The signed fields in relaxed form, in h= order; a name listed again takes the next
    instance up from the bottom (RFC 6376 §5.4.2), and one listed past them adds nothing."""
    instances: dict[str, list[HeaderField]] = {}
    for field in fields:
        instances.setdefault(field.key, []).append(field)
    parts = []
    for name in names:
        stack = instances.get(name)
        if stack:
            parts.append(relaxed_header(stack.pop().raw))
    return b"".join(parts)


def _signature(
    key: SigningKey, names: Sequence[str], signed_head: bytes, body_hash: str, stamp: int
) -> bytes:
    """One DKIM-Signature field, folded, with its CRLF."""
    config = key.config
    tokens = [
        (" ", "v=1;"),
        (" ", f"a={key.algorithm};"),
        (" ", "c=relaxed/relaxed;"),
        (" ", f"d={config.domain};"),
        (" ", f"s={config.selector};"),
        (" ", f"t={stamp};"),
    ]
    # h= may fold around its colons (RFC 6376 §3.5, sig-h-tag).
    tokens += [
        ("", f":{name}") if index else (" ", f"h={name}") for index, name in enumerate(names)
    ]
    tokens[-1] = (tokens[-1][0], tokens[-1][1] + ";")
    tokens += [(" ", f"bh={body_hash};"), (" ", "b=")]
    unsigned = _fold(f"{FIELD_NAME}:", tokens)
    # The field signs itself with b= empty, as it will stand (RFC 6376 §3.7).
    digest_input = signed_head + relaxed_header(unsigned.encode("ascii"))[:-2]
    value = _b64(_sign(key, digest_input))
    return (unsigned + _fold_value(unsigned, value) + "\r\n").encode("ascii")


def _fold(start: str, tokens: Sequence[tuple[str, str]]) -> str:
    """`start` and the tokens, each after its separator, breaking lines (with FWS, CRLF and a
    space) where the next token would pass 78 columns."""
    text, width = start, len(start)
    for separator, token in tokens:
        if width + len(separator) + len(token) > _FOLD_AT:
            text += "\r\n " + token
            width = 1 + len(token)
        else:
            text += separator + token
            width += len(separator) + len(token)
    return text


def _fold_value(before: str, value: str) -> str:
    """The b= value, split across lines of at most 78 columns (its whitespace is ignored)."""
    room = _FOLD_AT - len(before.rpartition("\n")[2])
    parts = [value[:room]] if room > 0 else [""]
    rest = value[len(parts[0]) :]
    while rest:
        parts.append(rest[: _FOLD_AT - 1])
        rest = rest[_FOLD_AT - 1 :]
    return "\r\n ".join(parts)


def _sign(key: SigningKey, data: bytes) -> bytes:
    private = key.private
    if isinstance(private, ed25519.Ed25519PrivateKey):
        # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data, not the data.
        return private.sign(hashlib.sha256(data).digest())
    return private.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
