"""What the submission listener changes in a message it accepts, working on the bytes as sent.

RFC 6409 lets a submission server complete a message; the listener does the least that makes
it a proper message and keeps everything else byte for byte (line endings included, so a DKIM
signature the application made still verifies):
- a Received field on top (RFC 5321 §4.4), with protocol ESMTPSA (RFC 3848) and Mailroom's id;
  no `for <recipient>` clause, which would reveal a Bcc recipient;
- every Bcc field removed (RFC 5322 §3.6.3: the copy sent to the others must not show it);
- Message-ID `<id@sender domain>` (as Mailroom writes its own) and Date, when missing
  (RFC 6409 §8.3, §8.4).
The header section ends at the first line that is neither a field nor a continuation, as
parsers read it; added fields go at its end, so they never land in the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from settings.parsing import is_dns_name, is_ip

_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")  # RFC 5322 §3.6.8 field name, then ":"
_CONTINUATION = (b" ", b"\t")
_CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Trace:
    """Who handed the message over, for its Received field."""

    helo: str  # the name the client gave in EHLO
    peer_ip: str  # the client's IP address
    by: str  # this listener's host name


def received_field(trace: Trace, message_id: str, now: datetime) -> bytes:
    """The Received field (CRLF-terminated, folded) for a message accepted at `now`."""
    helo = trace.helo if _valid_helo(trace.helo) else "unknown"
    literal = f"[IPv6:{trace.peer_ip}]" if ":" in trace.peer_ip else f"[{trace.peer_ip}]"
    return (
        f"Received: from {helo} ({literal})\r\n"
        f"\tby {trace.by} (Mailroom) with ESMTPSA id {message_id};\r\n"
        f"\t{format_datetime(now)}\r\n"
    ).encode("ascii")


def _valid_helo(name: str) -> bool:
    if name.startswith("[") and name.endswith("]"):
        return is_ip(name[1:-1].removeprefix("IPv6:"))
    return name.isascii() and is_dns_name(name)


def complete(data: bytes, *, trace: Trace, message_id: str, id_domain: str, now: datetime) -> bytes:
    """The message `data` (as received after DATA, CRLF lines) ready to queue.

    `now` must be timezone-aware; `id_domain` is the right-hand side of a Message-ID added here.
    """
    fields, rest = split_fields(data)
    kept = [line for name, group in fields if name != b"bcc" for line in group]
    names = {name for name, _ in fields}
    has_message_id, has_date = b"message-id" in names, b"date" in names
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += _CRLF  # a header section with no line end: nothing follows it
    if not has_message_id:
        kept.append(f"Message-ID: <{message_id}@{id_domain}>\r\n".encode("ascii"))
    if not has_date:
        kept.append(f"Date: {format_datetime(now)}\r\n".encode("ascii"))
    return b"".join([received_field(trace, message_id, now), *kept, *rest])


def split_fields(data: bytes) -> tuple[list[tuple[bytes, list[bytes]]], list[bytes]]:
    """The header section as (lower-case name, its lines: the first and its continuations) per
    field, in order, and the lines after it; every line keeps its line end."""
    lines = data.splitlines(keepends=True)
    end = _header_end(lines)
    fields: list[tuple[bytes, list[bytes]]] = []
    for line in lines[:end]:
        if line.startswith(_CONTINUATION):
            fields[-1][1].append(line)  # _header_end: never the first line of the section
            continue
        match = _FIELD.match(line)
        assert match is not None  # _header_end stops at the first line that is no field
        fields.append((match[1].lower(), [line]))
    return fields, lines[end:]


def _header_end(lines: list[bytes]) -> int:
    """Index of the first line after the header section (the blank line, or the body)."""
    for index, line in enumerate(lines):
        if line.startswith(_CONTINUATION):
            if index == 0:
                return 0  # a continuation with nothing to continue: no header section
            continue
        if _FIELD.match(line) is None:
            return index
    return len(lines)
