"""The Notification model: the producer API's fields, validated once at the edge.

`Notification` holds exactly the keyword arguments of `notify()` and of the `mailroom.notify` task.
Validation is strict where a mistake would reach a mail server or a header: addresses follow
RFC 5321/5322 (dot-atom or quoted local part, RFC 6531 non-ASCII local parts, domains that convert
to IDNA A-labels, RFC 5321 §4.5.3.1 lengths), and no header value may carry a line break, so no
input can inject a header. Every failure is an `InvalidNotification` whose one line names the field.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from typing import Any, Self

import idna
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# RFC 5321 §4.5.3.1.1-3: local part 64 octets; the path "<addr>" 256 octets, so 254 for addr.
MAX_LOCAL_OCTETS = 64
MAX_ADDRESS_OCTETS = 254
MAX_DOMAIN_OCTETS = 253  # RFC 1035 §2.3.4 (255 on the wire) in text form
# Postfix keeps at most header_size_limit (102400) bytes of one header field; 10 000 characters
# stays below it even when every character needs an RFC 2047 encoded word (about 4 bytes each).
MAX_HEADER_CHARS = 10_000
MAX_IDEMPOTENCY_KEY_CHARS = 256
LINE_LIMIT = 998  # RFC 5322 §2.1.1: octets per line, CRLF excluded

# Headers Mailroom writes itself; a producer may not set or override them.
STRUCTURAL_HEADERS = frozenset(
    {"from", "sender", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version"}
    | {"return-path"}  # and every Content-* header
)

_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # str.splitlines() splits here
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a lone surrogate has no UTF-8 form
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 §3.6.8 ftext
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
_WORD = re.compile(r"[^ \t]+")
_REGISTRY = HeaderRegistry()
# Names the stdlib parses as structured (addresses, dates, MIME); the rest are unstructured text.
STRUCTURED_FIELDS = frozenset(
    name for name, cls in _REGISTRY.registry.items() if not issubclass(cls, UnstructuredHeader)
)


class InvalidNotification(ValueError):
    """Bad producer input; the message is one line that starts with the field, e.g. "to[1]: …"."""


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


def check_header_text(field: str, value: str) -> None:
    """Raise InvalidNotification if `value` can't stand in a header: line breaks, controls, size."""
    if _LINE_BREAK.search(value):
        raise InvalidNotification(f"{field}: contains a line break")
    if bad := _CONTROL.search(value):
        raise InvalidNotification(f"{field}: contains the control character U+{ord(bad[0]):04X}")
    if len(value) > MAX_HEADER_CHARS:
        raise InvalidNotification(f"{field}: longer than {MAX_HEADER_CHARS} characters")


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


def _check_extra_header(name: str, value: str) -> None:
    field = f"headers[{name!r}]"
    if not _FIELD_NAME.fullmatch(name):
        raise InvalidNotification(f"{field}: the name is not RFC 5322 field-name text")
    lowered = name.lower()
    if lowered in STRUCTURAL_HEADERS or lowered.startswith("content-"):
        raise InvalidNotification(f"{field}: Mailroom writes this header itself")
    check_header_text(field, value)
    if value.isascii():
        # ASCII values are written as given and folded only at whitespace, so a word that cannot
        # fit on one line after "Name: " would break RFC 5322's 998-octet limit.
        longest = max((len(word) for word in _WORD.findall(value)), default=0)
        if len(name) + 2 + longest > LINE_LIMIT:
            raise InvalidNotification(
                f"{field}: a word too long to fold within {LINE_LIMIT} octets"
            )
    if lowered in STRUCTURED_FIELDS:  # Reply-To, Resent-*: must parse as the stdlib reads them
        try:
            defects = _REGISTRY(name, value).defects
        except (ValueError, TypeError, IndexError) as exc:  # what the stdlib's parsers raise
            raise InvalidNotification(f"{field}: {exc}") from None
        if defects:
            raise InvalidNotification(f"{field}: {defects[0]}")


def _parse_all(field: str, values: list[str]) -> tuple[Mailbox, ...]:
    return tuple(parse_mailbox(f"{field}[{index}]", value) for index, value in enumerate(values))


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part!r}]" if text else str(part)
    return text or "notification"


@dataclass(frozen=True, slots=True)
class _Parsed:
    """The addresses of a valid Notification, parsed once by its validator."""

    sender: Mailbox
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    recipients: tuple[str, ...]  # to + cc + bcc as bare addresses, each once, in order
    smtputf8: bool  # some address has a non-ASCII local part


class Notification(BaseModel):
    """One notification as a producer gives it (DESIGN.md "Python API"); frozen once valid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sender: str
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None

    _parsed: _Parsed = PrivateAttr()

    @classmethod
    def validate_dict(cls, data: Mapping[str, Any]) -> Self:
        """Validate producer input; raise InvalidNotification with one line naming the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, InvalidNotification):
                raise InvalidNotification(str(cause)) from None
            message = {"missing": "is required", "extra_forbidden": "is not a known field"}.get(
                error["type"], error["msg"]
            )
            raise InvalidNotification(f"{_location(error['loc'])}: {message}") from None

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        check_header_text("subject", value)
        return value

    @field_validator("text", "html")
    @classmethod
    def _check_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        # RFC 5322 §2.3 text excludes NUL; checked with `in` first because bodies may be large.
        if "\x00" in value:
            raise InvalidNotification(f"{info.field_name}: contains U+0000")
        if not value.isascii() and (bad := _SURROGATE.search(value)):
            raise InvalidNotification(f"{info.field_name}: contains U+{ord(bad[0]):04X}")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, text in value.items():
            if name.lower() in seen:
                raise InvalidNotification(f"headers[{name!r}]: given twice (names ignore case)")
            seen.add(name.lower())
            _check_extra_header(name, text)
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _check_idempotency_key(cls, value: str | None) -> str | None:
        if value is not None:
            if not value:
                raise InvalidNotification("idempotency_key: is empty")
            if len(value) > MAX_IDEMPOTENCY_KEY_CHARS:
                raise InvalidNotification(
                    f"idempotency_key: longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters"
                )
            check_header_text("idempotency_key", value)
        return value

    @model_validator(mode="after")
    def _check_addresses(self) -> Self:
        # Addresses are parsed here rather than in field validators so each is parsed once and
        # the typed result kept; field errors (types, subject, headers) are reported first.
        sender = parse_mailbox("sender", self.sender)
        to, cc = _parse_all("to", self.to), _parse_all("cc", self.cc)
        bcc = _parse_all("bcc", self.bcc)
        everyone = (sender, *to, *cc, *bcc)
        self._parsed = _Parsed(
            sender=sender,
            to=to,
            cc=cc,
            recipients=tuple(dict.fromkeys(box.address for box in everyone[1:])),
            smtputf8=any(box.smtputf8 for box in everyone),
        )
        if not (self.to or self.cc or self.bcc):
            raise InvalidNotification("to: no recipient (to, cc and bcc are all empty)")
        if self.text is None and self.html is None:
            raise InvalidNotification("text: neither text nor html is given")
        return self

    @property
    def sender_mailbox(self) -> Mailbox:
        """The sender, parsed."""
        return _parsed(self).sender

    @property
    def to_mailboxes(self) -> tuple[Mailbox, ...]:
        """The To recipients, parsed, in the order given."""
        return _parsed(self).to

    @property
    def cc_mailboxes(self) -> tuple[Mailbox, ...]:
        """The Cc recipients, parsed, in the order given."""
        return _parsed(self).cc

    def envelope_sender(self) -> str:
        """The bare sender address for MAIL FROM."""
        return _parsed(self).sender.address

    def envelope_recipients(self) -> list[str]:
        """to + cc + bcc as bare addresses for RCPT TO, each once, in the order first given.

        Domains are lower-case (A-labels for ASCII local parts), so two spellings of one domain
        count as one recipient; local parts stay case-sensitive (RFC 5321 §2.4).
        """
        return list(_parsed(self).recipients)

    def needs_smtputf8(self) -> bool:
        """True when the sender or any recipient has a non-ASCII local part (RFC 6531)."""
        return _parsed(self).smtputf8


def _parsed(notification: Notification) -> _Parsed:
    # pydantic serves private attributes through __getattr__, a few microseconds a read, and
    # the producer reads these several times per message; the dict behind them is a plain
    # attribute.
    private = notification.__pydantic_private__
    assert private is not None  # the model has private attributes, so pydantic set the dict
    parsed: _Parsed = private["_parsed"]
    return parsed
