"""The MIME part of one attachment, written directly as tasks.message writes the rest.

    Content-Type: application/pdf;
     name="invoice.pdf"
    Content-Disposition: attachment;
     filename="invoice.pdf"
    Content-Transfer-Encoding: base64

The body is base64 in lines of 76 characters (RFC 2045 §6.8), encoded here once, when the message
is built at enqueue. A file name that is not short printable ASCII goes out twice, as readers
differ: RFC 2231 `filename*` (with `*0*`, `*1*` … continuations) in Content-Disposition, which
the standards and most readers use, and an RFC 2047 encoded `name=` in Content-Type, which
Outlook reads. Every line stays within 78 characters. An inline part is `Content-Disposition:
inline` with its `Content-ID: <…>`.
"""

from __future__ import annotations

import binascii
import re

from tasks.attachments import Attachment
from tasks.encoded_words import EW_OCTETS, encoded_word, utf8_chunks

_FOLD_AT = 78
# The first encoded word shares its line with ' name="': fewer octets, so it fits in 78.
_FIRST_NAME_OCTETS = (_FOLD_AT - len(' name="') - len("=?utf-8?b??=")) // 4 * 3
_LINE = 76  # base64 characters a line (RFC 2045 §6.8)
_LINES = re.compile(rb".{1,%d}" % _LINE, re.DOTALL)
# A quoted parameter value needs no encoding when it is printable ASCII without '"' and '\'
# (quoted-pair is legal, but readers unescape it unevenly).
_PLAIN = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
# RFC 2231 §7 attribute-char: token characters but "*", "'" and "%".
_ATTRIBUTE_CHARS = frozenset(
    b"!#$&+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


def attachment_part(attachment: Attachment) -> bytes:
    """The attachment's header fields, the blank line and its base64 body (ending in CRLF)."""
    content_type = f"Content-Type: {attachment.content_type};"
    if len(content_type) > _FOLD_AT:  # a long media type goes on its own line
        content_type = f"Content-Type:\r\n {attachment.content_type};"
    disposition = "inline" if attachment.inline else "attachment"
    fields = [
        f"{content_type}\r\n {_name_parameter(attachment.filename)}",
        f"Content-Disposition: {disposition};\r\n {_filename_parameter(attachment.filename)}",
    ]
    if attachment.content_id is not None:
        fields.append(f"Content-ID: <{attachment.content_id}>")
    fields.append("Content-Transfer-Encoding: base64\r\n\r\n")
    return "\r\n".join(fields).encode("ascii") + base64_lines(attachment.content)


def base64_size(size: int) -> int:
    """Octets `base64_lines` makes of `size` octets."""
    characters = (size + 2) // 3 * 4
    return characters + (characters + _LINE - 1) // _LINE * 2


def base64_lines(data: bytes) -> bytes:
    """`data` as base64 lines of 76 characters, each ending in CRLF (nothing for no data)."""
    # The regex engine cuts the lines in C: a fifth faster than slicing in a Python loop.
    lines = _LINES.findall(binascii.b2a_base64(data, newline=False))
    lines.append(b"")
    return b"\r\n".join(lines) if len(lines) > 1 else b""


def _plain(filename: str, width: int) -> bool:
    # Text that looks like an encoded word would be decoded by readers: it is encoded instead.
    looks_encoded = "=?" in filename and "?=" in filename
    fits = width + len(filename) + 2 <= _FOLD_AT
    return fits and not looks_encoded and _PLAIN.fullmatch(filename) is not None


def _filename_parameter(filename: str) -> str:
    """`filename="…"`, or its RFC 2231 form, split into continuations that fit a line."""
    if _plain(filename, len(' filename=";')):
        return f'filename="{filename}"'
    pieces = [
        "".join(chr(octet) if octet in _ATTRIBUTE_CHARS else f"%{octet:02X}" for octet in char)
        for char in (character.encode() for character in filename)
    ]
    first = "utf-8''"
    # " filename*NN*=" and ";" leave the rest of a line to the value; a section never splits a
    # character, so each decodes alone (some readers decode section by section).
    room = _FOLD_AT - len(" filename*99*=;")
    sections: list[str] = []
    current = first
    for piece in pieces:
        if len(current) + len(piece) > room:
            sections.append(current)
            current = ""
        current += piece
    sections.append(current)
    if len(sections) == 1:
        return f"filename*={sections[0]}"
    return ";\r\n ".join(f"filename*{index}*={text}" for index, text in enumerate(sections))


def _name_parameter(filename: str) -> str:
    """`name="…"`, or RFC 2047 encoded words inside the quotes, one a line (what Outlook reads)."""
    if _plain(filename, len(' name=";')):
        return f'name="{filename}"'
    words = map(encoded_word, utf8_chunks(filename.encode(), _FIRST_NAME_OCTETS, EW_OCTETS))
    return 'name="' + "\r\n ".join(words) + '"'
