"""Header text a producer gives: the one failure type of producer input, and the checks every
header value and extra header must pass so none can break a line or inject a header (RFC 5322
line limits, field-name text, structured fields the stdlib must be able to parse)."""

from __future__ import annotations

import re
from email.headerregistry import HeaderRegistry, UnstructuredHeader

# Postfix keeps at most header_size_limit (102400) bytes of one header field; 10 000 characters
# stays below it even when every character needs an RFC 2047 encoded word (about 4 bytes each).
MAX_HEADER_CHARS = 10_000
LINE_LIMIT = 998  # RFC 5322 §2.1.1: octets per line, CRLF excluded

# Headers Mailroom writes itself; a producer may not set or override them.
STRUCTURAL_HEADERS = frozenset(
    {"from", "sender", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version"}
    | {"return-path"}  # and every Content-* header
)

_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # str.splitlines() splits here
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 §3.6.8 ftext
_WORD = re.compile(r"[^ \t]+")
_REGISTRY = HeaderRegistry()
# Names the stdlib parses as structured (addresses, dates, MIME); the rest are unstructured text.
STRUCTURED_FIELDS = frozenset(
    name for name, cls in _REGISTRY.registry.items() if not issubclass(cls, UnstructuredHeader)
)


class InvalidNotification(ValueError):
    """Bad producer input; the message is one line that starts with the field, e.g. "to[1]: …"."""


def check_header_text(field: str, value: str) -> None:
    """Raise InvalidNotification if `value` can't stand in a header: line breaks, controls, size."""
    if _LINE_BREAK.search(value):
        raise InvalidNotification(f"{field}: contains a line break")
    if bad := _CONTROL.search(value):
        raise InvalidNotification(f"{field}: contains the control character U+{ord(bad[0]):04X}")
    if len(value) > MAX_HEADER_CHARS:
        raise InvalidNotification(f"{field}: longer than {MAX_HEADER_CHARS} characters")


def check_extra_header(name: str, value: str) -> None:
    """Raise InvalidNotification unless `name: value` may stand among the extra headers."""
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
