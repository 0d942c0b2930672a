"""E-mail addresses as producers write them: "a@b" or "Name <a@b>", checked against RFC 5321/5322
(dot-atom or quoted local part, RFC 6531 non-ASCII local parts, IDNA domains, the RFC 5321
§4.5.3.1 lengths) into a `Mailbox`."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import idna

from tasks.header_text import InvalidNotification, check_header_text

# RFC 5321 §4.5.3.1.1-3: local part 64 octets; the path "<addr>" 256 octets, so 254 for addr.
MAX_LOCAL_OCTETS = 64
MAX_ADDRESS_OCTETS = 254
MAX_DOMAIN_OCTETS = 253  # RFC 1035 §2.3.4 (255 on the wire) in text form
# RFC 5322 §3.2.3 atext plus RFC 6531 §3.3 UTF8-non-ascii (_unsafe_non_ascii refuses controls
# and spaces among the latter)
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]|\\[\x20-\x7e])*"')
# RFC 5322 §3.2.4 quoted-string for display names: unlike RFC 5321's, it may hold tabs.
_QUOTED_PHRASE = re.compile(
    r'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One validated address: display name for headers, local part and domain for the envelope.

    `domain` is lower-case, as an A-label unless the local part is non-ASCII (then a U-label,
    since such an address only travels with SMTPUTF8 anyway).
    """

    display_name: str
    local: str  # as written, quoted form kept
    domain: str

    @property
    def address(self) -> str:
        """The bare address for MAIL FROM / RCPT TO."""
        return f"{self.local}@{self.domain}"

    @property
    def smtputf8(self) -> bool:
        """True when the address can only travel with SMTPUTF8 (RFC 6531 §3.3)."""
        return not self.local.isascii()


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _unsafe_non_ascii(text: str) -> str | None:
    """The first non-ASCII control, format, unassigned or space character, if any."""
    if text.isascii():
        return None
    for char in text:
        if not char.isascii() and unicodedata.category(char)[0] in "CZ":
            return char
    return None


def a_label_domain(domain: str) -> str:
    """Return `domain` as lower-case A-labels; raise ValueError with the reason it is invalid."""
    if not domain:
        raise ValueError("empty domain")
    if domain.startswith("["):
        raise ValueError("address literals are not accepted")
    if domain.isascii():
        ascii_domain = domain.lower()
    else:
        try:
            ascii_domain = idna.encode(domain, uts46=True, std3_rules=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError(f"domain is not valid IDNA: {exc}") from None
    if len(ascii_domain) > MAX_DOMAIN_OCTETS:
        raise ValueError(f"domain longer than {MAX_DOMAIN_OCTETS} octets")
    labels = ascii_domain.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"domain label {label!r} is not a DNS label")
        if label[2:4] == "--":  # RFC 5891 §4.2.3.1: reserved unless a valid A-label
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise ValueError(f"domain label {label!r} is not a valid A-label") from None
    if labels[-1].isdigit():
        raise ValueError("numeric top-level domain, as in an IP address")
    return ascii_domain


def _split_display_name(value: str) -> tuple[str, str]:
    """Split "Name <addr>" into (name, addr); a value without angle brackets is all address."""
    if not value.endswith(">"):
        return "", value
    if '"' not in value:
        # Unquoted, every '<' counts: str methods find them faster than the loop below.
        if value.count("<") > 1:
            raise ValueError("more than one '<'")
        start = value.find("<")
        if start < 0:
            raise ValueError("'>' without '<'")
        return " ".join(value[:start].split()), value[start + 1 : -1]
    start, in_quotes, escaped = -1, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == "<" and not in_quotes:
            if start >= 0:
                raise ValueError("more than one '<'")
            start = index
    if start < 0:
        raise ValueError("'>' without '<'")
    name = value[:start].strip()
    if len(name) >= 2 and _QUOTED_PHRASE.fullmatch(name):
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    # Whitespace in a display name carries no meaning, and header parsers turn tabs and runs
    # into single spaces anyway; normalising here makes the name written the name read.
    return " ".join(name.split()), value[start + 1 : -1]


def parse_mailbox(field: str, value: str) -> Mailbox:
    """Validate "a@b" or "Name <a@b>"; raise InvalidNotification naming `field` otherwise."""
    check_header_text(field, value)
    try:
        name, addr = _split_display_name(value)
        local, at, domain = addr.rpartition("@")
        if not at:
            raise ValueError("no '@'")
        if not local:
            raise ValueError("empty local part")
        if not (_DOT_ATOM.fullmatch(local) or (len(local) > 2 and _QUOTED.fullmatch(local))):
            raise ValueError("local part is neither a dot-atom nor a quoted string")
        if bad := _unsafe_non_ascii(local):
            raise ValueError(f"local part contains U+{ord(bad):04X}")
        if len(local.encode()) > MAX_LOCAL_OCTETS:
            raise ValueError(f"local part longer than {MAX_LOCAL_OCTETS} octets")
        ascii_domain = a_label_domain(domain)
        domain = ascii_domain if local.isascii() else idna.decode(ascii_domain)
        if len(f"{local}@{domain}".encode()) > MAX_ADDRESS_OCTETS:
            raise ValueError(f"longer than {MAX_ADDRESS_OCTETS} octets")
    except ValueError as exc:
        raise InvalidNotification(
            f"{field}: {_shown(value)} is not a valid e-mail address ({exc})"
        ) from None
    return Mailbox(display_name=name, local=local, domain=domain)
