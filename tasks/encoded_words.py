"""RFC 2047 "B" encoded words of whole UTF-8 characters, for header text that cannot go out as it
is: the message's headers (tasks.message) and an attachment's `name=` (tasks.attachment_mime)."""

from __future__ import annotations

import binascii

# RFC 2047 §2: an encoded word is at most 75 characters; "=?utf-8?b?" and "?=" take 12 of them,
# and base64 turns 3 octets into 4 characters.
EW_OVERHEAD = len("=?utf-8?b??=")
EW_OCTETS = (75 - EW_OVERHEAD) // 4 * 3


def utf8_chunks(data: bytes, first: int, size: int) -> list[bytes]:
    """Split UTF-8 `data` into pieces of whole characters: `first` octets at most, then `size`."""
    chunks: list[bytes] = []
    start, limit, total = 0, first, len(data)
    while start < total:
        end = start + limit
        if end < total:
            while data[end] & 0xC0 == 0x80:  # a continuation octet: cut before its character
                end -= 1
        chunks.append(data[start:end])
        start, limit = end, size
    return chunks


def encoded_word(chunk: bytes) -> str:
    """`chunk` (whole UTF-8 characters) as one encoded word."""
    return f"=?utf-8?b?{binascii.b2a_base64(chunk, newline=False).decode('ascii')}?="
