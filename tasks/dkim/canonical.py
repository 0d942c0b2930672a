"""RFC 6376 §3.4.2 and §3.4.4: the "relaxed" canonical forms of header fields and of the body.

Everything is bytes: an SMTPUTF8 message (RFC 6531) has UTF-8 in its header fields, and the
algorithms only ever look at spaces, tabs and CRLF, so no decoding is needed (or wanted).
`split_message` cuts a message into its header fields (each with its folding, as written) and
its body, which is what the signer needs; a bare LF counts as a line break, as verifiers read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WSP_RUN = re.compile(rb"[ \t]+")
_UNFOLD = re.compile(rb"\r\n(?=[ \t])")
_CRLF = b"\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as the message holds it: its name, and the whole field up to (not
    including) its final CRLF, folding included."""

    name: str  # as written (ASCII: RFC 5322 field names are printable US-ASCII)
    raw: bytes
    key: str = field(init=False)  # the name lower-case, as DKIM compares names

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.name.lower())


def split_message(data: bytes) -> tuple[list[HeaderField], bytes]:
    """The header fields of `data` (CRLF line breaks) in order, and the body after the empty line.

    A message without an empty line is all header; a line that is neither a field nor a
    continuation (no colon) is skipped, as DKIM verifiers skip what they cannot parse either.
    """
    if data.count(b"\n") != data.count(_CRLF):
        # A bare LF (a submission client's): receiving MTAs store it as CRLF, and verifiers
        # read it as a line break, so the signature is made over the message as they see it.
        data = _BARE_LF.sub(_CRLF, data)
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator and head.endswith(_CRLF):
        head = head[:-2]
    fields: list[HeaderField] = []
    lines: list[bytes] = []
    for line in head.split(_CRLF):
        if line[:1] in (b" ", b"\t") and lines:
            lines.append(line)
            continue
        _add(fields, lines)
        lines = [line]
    _add(fields, lines)
    return fields, body


def _add(fields: list[HeaderField], lines: list[bytes]) -> None:
    if not lines:
        return
    raw = _CRLF.join(lines)
    name, colon, _ = raw.partition(b":")
    name = name.rstrip(b" \t")  # RFC 5322 §4.5.3's obsolete "Name :" is still a field
    if colon and name and name.isascii() and not _WSP_RUN.search(name):
        fields.append(HeaderField(name.decode("ascii"), raw))


def relaxed_header(raw: bytes) -> bytes:
    """One header field in relaxed form, with its CRLF (RFC 6376 §3.4.2): the name lower-case,
    the value unfolded, runs of whitespace one space, none around the colon or at the end."""
    name, _, value = raw.partition(b":")
    # The regular expressions run only where they would change something: most fields are one
    # line with single spaces, and this runs for every signed field of every message.
    if _CRLF in value:
        value = _UNFOLD.sub(b"", value)
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return name.strip(b" \t").lower() + b":" + value.strip(b" \t") + _CRLF


def relaxed_body(body: bytes) -> bytes:
    """The body in relaxed form (RFC 6376 §3.4.4): runs of whitespace one space, none at the end
    of a line, no empty lines at the end, and a final CRLF unless the body is empty."""
    if b"\t" in body or b"  " in body:  # else there is no run to shorten (most bodies)
        body = _WSP_RUN.sub(b" ", body)
    body = body.replace(b" \r\n", _CRLF)
    end = len(body)
    while end >= 2 and body[end - 2 : end] == _CRLF:
        end -= 2
    body = body[:end].rstrip(b" ")  # a last line without CRLF keeps no trailing space either
    return body + _CRLF if body else b""
