"""Turn a valid Notification into the RFC 5322 / MIME bytes Mailroom stores and sends.

The bytes are written here directly (the stdlib's `EmailMessage` costs some forty times the CPU,
more than the SMTP session the message feeds; scripts/bench_message.py compares): Message-ID,
Date, From, To, Cc (never Bcc), Reply-To, Subject, the producer's extra headers,
List-Unsubscribe(-Post) when asked for (tasks/list_unsubscribe.py), MIME-Version, and a
text/plain, text/html or multipart/alternative body; with attachments, a multipart/mixed around it
and them, inline parts in a multipart/related with the HTML (their parts: tasks.attachment_mime).
- Header fields fold at whitespace only (RFC 5322 §2.2.3), aiming at 78 characters a line and
  never above 998 octets; text that is not ASCII, or looks like an RFC 2047 encoded word, or has a
  word too long to fold, goes out as RFC 2047 "B" encoded words of whole UTF-8 characters.
  Addresses keep IDNA A-labels, or UTF-8 when SMTPUTF8 is needed (RFC 6531: then, and only then,
  the header block is UTF-8). A structured extra header that is not plain text (a Reply-To with a
  non-ASCII name) is left to the stdlib's header classes: it is rare and their parse is exact.
- Bodies are always 7-bit: as they are when ASCII with lines within 78 characters, otherwise
  quoted-printable (lines of at most 76, RFC 2045 §6.7) or base64 when mostly non-ASCII. Line
  breaks become CRLF; a body always ends with one. Dot-stuffing is the SMTP client's business.
A message above `max_bytes` is refused, from a cheap lower bound before building when possible.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy
from email.utils import format_datetime

from tasks.attachment_mime import attachment_part, base64_size
from tasks.encoded_words import EW_OCTETS, EW_OVERHEAD, encoded_word, utf8_chunks
from tasks.notification import (
    LINE_LIMIT,
    STRUCTURED_FIELDS,
    Attachment,
    InvalidNotification,
    Mailbox,
    Notification,
)
from workers.model.envelope import OutboundMessage, outbound

_ASCII_POLICY = policy.SMTP.clone(cte_type="7bit")  # for the stdlib fallback only
_UTF8_POLICY = _ASCII_POLICY.clone(utf8=True)
_FOLD_AT = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
_WORD = re.compile(r"[^ \t]+")
_CHUNK = re.compile(r"[ \t]*[^ \t]+")  # one word with the whitespace before it
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"  # RFC 5322 §3.2.3
_DOT_ATOM_TEXT = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_HIGH_BYTES = bytes(range(128, 256))
_FIRST_WORD_OCTETS = 6  # two octets more than the longest UTF-8 character
# A quoted display name with a word longer than this is encoded instead, so that the word, with
# "Name: " before it and "," after it, still fits within 998 octets.
_PHRASE_WORD_LIMIT = 900
_CONTENT_TYPE = {"plain": 'Content-Type: text/plain; charset="utf-8"\r\n'}
_CONTENT_TYPE["html"] = 'Content-Type: text/html; charset="utf-8"\r\n'


def build_message(
    notification: Notification,
    *,
    message_id: str,
    helo_domain: str,
    max_bytes: int,
    now: datetime | None = None,
) -> OutboundMessage:
    """Return the notification as an `OutboundMessage` ready for DATA.

    `message_id` and `helo_domain` form the Message-ID `<message_id@helo_domain>`; `now` (an
    aware datetime, default: the current time) gives the Date header.

    :raises InvalidNotification: the message would be larger than `max_bytes` ("message: …").
    :raises ValueError: `message_id` or `helo_domain` is not dot-atom text, or `now` is naive.
    """
    if not (_DOT_ATOM_TEXT.fullmatch(message_id) and _DOT_ATOM_TEXT.fullmatch(helo_domain)):
        raise ValueError(f"Message-ID <{message_id}@{helo_domain}> is not RFC 5322 msg-id text")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    _refuse_above(_lower_bound(notification), max_bytes, estimate=True)

    smtputf8 = notification.needs_smtputf8()
    fields = [
        f"Message-ID: <{message_id}@{helo_domain}>",
        f"Date: {format_datetime(now)}",
        _field("From", _mailbox(notification.sender_mailbox), utf8=smtputf8),
    ]
    to, cc = notification.to_mailboxes, notification.cc_mailboxes
    if to:
        fields.append(_field("To", ", ".join(map(_mailbox, to)), utf8=smtputf8))
    elif not cc:
        # RFC 5322 §3.6.3: the usual stand-in when every recipient is blind.
        fields.append("To: undisclosed-recipients:;")
    if cc:
        fields.append(_field("Cc", ", ".join(map(_mailbox, cc)), utf8=smtputf8))
    if reply_to := notification.reply_to_mailboxes:
        fields.append(_field("Reply-To", ", ".join(map(_mailbox, reply_to)), utf8=smtputf8))
    fields.append(_field("Subject", notification.subject, utf8=smtputf8))
    for name, value in [*notification.headers.items(), *notification.list_header_fields()]:
        fields.append(_field(name, value, utf8=smtputf8))
    fields.append("MIME-Version: 1.0\r\n")
    head = "\r\n".join(fields).encode("utf-8" if smtputf8 else "ascii")

    data = head + _body(notification.text, notification.html, notification.attachment_list)
    _refuse_above(len(data), max_bytes, estimate=False)
    return outbound(message_id, notification.envelope_sender(), data, smtputf8=smtputf8)


def _lower_bound(notification: Notification) -> int:
    """Octets the message takes at least: encoding never shrinks a character below one octet."""
    size = len(notification.subject) + len(notification.text or "") + len(notification.html or "")
    size += sum(base64_size(len(a.content)) for a in notification.attachment_list)
    return size + sum(len(name) + len(value) for name, value in notification.headers.items())


def _refuse_above(size: int, max_bytes: int, *, estimate: bool) -> None:
    if size > max_bytes:
        amount = f"at least {size}" if estimate else str(size)
        raise InvalidNotification(f"message: {amount} bytes exceeds MAX_MESSAGE_BYTES {max_bytes}")


def _field(name: str, value: str, *, utf8: bool) -> str:
    """One header field, folded, without its final CRLF; the writer keeps the value as read.

    - Text that folds at whitespace within 998 octets, ASCII (or UTF-8 in an address header of
      an SMTPUTF8 message): as it is. Encoding it would break headers such as List-Unsubscribe
      whose URLs must stay literal.
    - Other unstructured text (Subject, X-*): RFC 2047 encoded words throughout. Encoding only
      the non-ASCII words would make readers drop or keep the spaces between them by rules few
      implement alike (RFC 2047 §6.2).
    - Other structured values (a producer's Reply-To with a non-ASCII name): the stdlib.
    """
    # Whitespace at either end of a field body means nothing to readers (parsers drop the
    # leading run), and a trailing run folded onto a line of its own is forbidden (RFC 5322
    # §3.2.2); so it is dropped here.
    value = value.strip(" \t")
    structured = name.lower() in STRUCTURED_FIELDS
    plain = value.isascii() or (structured and utf8)
    if plain and (structured or not _looks_encoded(value)):
        width = len(name) + 2
        if width + len(value) <= _FOLD_AT:  # the common case: one short line
            return f"{name}: {value}"
        longest = max((len(word.encode()) for word in _WORD.findall(value)), default=0)
        if width + longest <= LINE_LIMIT:
            return f"{name}: {_fold(width, value)}"
    if structured:
        stdlib = _UTF8_POLICY if utf8 else _ASCII_POLICY
        folded: str = stdlib.header_factory(name, value).fold(policy=stdlib)
        return folded.removesuffix("\r\n")
    return _encoded_field(name, value)


def _looks_encoded(text: str) -> bool:
    return "=?" in text and "?=" in text


def _fold(width: int, value: str) -> str:
    """Fold a header value at whitespace only (RFC 5322 §2.2.3), aiming at 78 characters a line.

    `width` is what the line holds before the value ("Name: "). A word longer than a line stays
    whole on a line of its own; the caller has stripped the value and checked that every word
    fits within 998 octets.
    """
    lines: list[str] = []
    line = ""
    for chunk in _CHUNK.findall(value):
        # A break goes before the whitespace that precedes a word, so no folded line is made
        # of whitespace alone (RFC 5322 §3.2.2); the value has no trailing whitespace.
        if line and width + len(line) + len(chunk) > _FOLD_AT and chunk[0] in " \t":
            lines.append(line)
            line, width = chunk, 0
        else:
            line += chunk
    lines.append(line)
    return "\r\n".join(lines)


def _encoded_field(name: str, text: str) -> str:
    """`Name: text` as RFC 2047 encoded words, one per line, each line within 78 characters."""
    # The first word shares its line with the name: shorter, but never too short for the
    # longest UTF-8 character (a long name makes that line longer than 78, as for ASCII text).
    room = max((_FOLD_AT - len(name) - 2 - EW_OVERHEAD) // 4 * 3, _FIRST_WORD_OCTETS)
    words = map(encoded_word, utf8_chunks(text.encode(), room, EW_OCTETS))
    if len(name) + 2 + EW_OVERHEAD + _FIRST_WORD_OCTETS * 4 // 3 > LINE_LIMIT:
        # Only a name of nearly 998 octets: the words start on the next line (readers may
        # then see a leading space).
        words = map(encoded_word, utf8_chunks(text.encode(), EW_OCTETS, EW_OCTETS))
        return f"{name}:\r\n " + "\r\n ".join(words)
    return f"{name}: " + "\r\n ".join(words)


def _mailbox(box: Mailbox) -> str:
    """The mailbox as RFC 5322 writes it: a quoted or encoded display name, then the address."""
    name = box.display_name
    if not name:
        return box.address
    if name.isascii() and not _looks_encoded(name):
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        # Display names have single spaces only (tasks.notification), so words split on " ".
        if len(phrase) <= _PHRASE_WORD_LIMIT or all(
            len(word) <= _PHRASE_WORD_LIMIT for word in phrase.split(" ")
        ):
            return f"{phrase} <{box.address}>"
    # RFC 2047 §5(3) allows encoded words as a phrase; space-separated, they fold cleanly.
    words = map(encoded_word, utf8_chunks(name.encode(), EW_OCTETS, EW_OCTETS))
    return f"{' '.join(words)} <{box.address}>"


def _body(text: str | None, html: str | None, attachments: Sequence[Attachment]) -> bytes:
    """The Content-* fields, the blank line and the body: one text part, or both as alternatives;
    inline parts in a multipart/related with the HTML, other attachments after it all in a
    multipart/mixed."""
    html_part = None if html is None else _part("html", html)
    if inline := [attachment_part(a) for a in attachments if a.inline]:
        assert html_part is not None  # Notification refuses inline parts without html
        html_part = _multipart('related;\r\n type="text/html"', [html_part, *inline])
    if text is None:
        assert html_part is not None  # Notification guarantees one of them
        body = html_part
    elif html_part is None:
        body = _part("plain", text)
    else:
        body = _multipart("alternative", [_part("plain", text), html_part])
    if files := [attachment_part(a) for a in attachments if not a.inline]:
        body = _multipart("mixed", [body, *files])
    return body


def _multipart(subtype: str, parts: Sequence[bytes]) -> bytes:
    """A multipart entity of `parts` (each its fields, blank line and body ending in CRLF)."""
    # A random boundary spares searching the bodies for a free one: "=_" never occurs in
    # quoted-printable or base64, 128 random bits nowhere else.
    boundary = f"=_{secrets.token_hex(16)}".encode("ascii")
    delimiter = b"\r\n--%s\r\n" % boundary
    return b"".join(
        (
            b'Content-Type: multipart/%s;\r\n boundary="%s"\r\n\r\n--%s\r\n'
            % (subtype.encode("ascii"), boundary, boundary),
            delimiter.join(parts),
            b"\r\n--%s--\r\n" % boundary,
        )
    )


def _part(subtype: str, text: str) -> bytes:
    cte, body = _encode_body(text)
    fields = f"{_CONTENT_TYPE[subtype]}Content-Transfer-Encoding: {cte}\r\n\r\n"
    return fields.encode("ascii") + body


def _encode_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, 7-bit body with CRLF line breaks, ending in one)."""
    data = text.encode()  # Notification refuses lone surrogates
    # Line breaks are CR, LF or CRLF (as bytes.splitlines reads them); the others of
    # str.splitlines (U+2028, FF, …) are text.
    if b"\r" in data:
        body = b"\r\n".join(data.splitlines()) + b"\r\n"
    else:
        body = data.replace(b"\n", b"\r\n")
        if not body.endswith(b"\n"):
            body += b"\r\n"
    if body.isascii() and (len(body) <= _FOLD_AT or max(map(len, body.split(b"\r\n"))) <= _FOLD_AT):
        return "7bit", body
    # Quoted-printable triples each non-ASCII octet, base64 grows everything by a third: the
    # shorter one is chosen, which keeps mostly-ASCII text readable.
    high = len(body) - len(body.translate(None, _HIGH_BYTES))
    if high * 6 > len(body):
        return "base64", base64.encodebytes(body).replace(b"\n", b"\r\n")
    return "quoted-printable", binascii.b2a_qp(body, istext=True)
