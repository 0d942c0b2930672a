"""Turn a valid Notification into the RFC 5322 / MIME bytes Mailroom stores and sends.

The stdlib `email` package writes the message: Message-ID, Date, From, To, Cc (never Bcc),
Subject, the producer's extra headers, and a text/plain, text/html or multipart/alternative body.
Bodies are always 7-bit (quoted-printable or base64 when needed), so 8BITMIME is only needed
when SMTPUTF8 is (RFC 6531 puts UTF-8 in the headers); lines end in CRLF and stay within 998
octets. A message above `max_bytes` is refused, from a cheap lower bound before building when
possible.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from email import policy
from email.header import Header
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime
from typing import Any

from tasks.notification import (
    LINE_LIMIT,
    STRUCTURED_FIELDS,
    InvalidNotification,
    Mailbox,
    Notification,
)
from workers.envelope import OutboundMessage, outbound


class _HeaderClasses(HeaderRegistry):
    """A HeaderRegistry that reuses its header classes.

    The stdlib's creates a new class with `type()` on every lookup, a sizeable share of the
    cost of a message; the class depends only on the registered parser, so one per parser does.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[type[Any], type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        parser = self.registry.get(name.lower(), self.default_class)
        cls = self._classes.get(parser)
        if cls is None:
            cls = self._classes.setdefault(parser, super().__getitem__(name))
        return cls


# cte_type="7bit" makes set_content pick quoted-printable or base64 for non-ASCII bodies;
# refold_source="none" makes `set_raw` values go out exactly as folded here (see _fold).
_HEADERS = _HeaderClasses()
_ASCII_POLICY = policy.SMTP.clone(cte_type="7bit", refold_source="none", header_factory=_HEADERS)
_UTF8_POLICY = _ASCII_POLICY.clone(utf8=True)
_FOLD_AT = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
_WORD = re.compile(r"[^ \t]+")
_CHUNK = re.compile(r"[ \t]*[^ \t]+")  # one word with the whitespace before it
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"  # RFC 5322 §3.2.3
_DOT_ATOM_TEXT = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")


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
    message = EmailMessage(policy=_UTF8_POLICY if smtputf8 else _ASCII_POLICY)
    _set_header(message, "Message-ID", f"<{message_id}@{helo_domain}>", utf8=smtputf8)
    _set_header(message, "Date", format_datetime(now), utf8=smtputf8)
    _set_header(message, "From", _mailbox(notification.sender_mailbox), utf8=smtputf8)
    to, cc = notification.to_mailboxes, notification.cc_mailboxes
    if to:
        _set_header(message, "To", ", ".join(map(_mailbox, to)), utf8=smtputf8)
    elif not cc:
        # RFC 5322 §3.6.3: the usual stand-in when every recipient is blind.
        _set_header(message, "To", "undisclosed-recipients:;", utf8=smtputf8)
    if cc:
        _set_header(message, "Cc", ", ".join(map(_mailbox, cc)), utf8=smtputf8)
    _set_header(message, "Subject", notification.subject, utf8=smtputf8)
    for name, value in notification.headers.items():
        _set_header(message, name, value, utf8=smtputf8)
    _set_body(message, notification.text, notification.html)

    data = message.as_bytes()
    _refuse_above(len(data), max_bytes, estimate=False)
    return outbound(message_id, notification.envelope_sender(), data, smtputf8=smtputf8)


def _lower_bound(notification: Notification) -> int:
    """Octets the message takes at least: encoding never shrinks a character below one octet."""
    size = len(notification.subject) + len(notification.text or "") + len(notification.html or "")
    return size + sum(len(name) + len(value) for name, value in notification.headers.items())


def _refuse_above(size: int, max_bytes: int, *, estimate: bool) -> None:
    if size > max_bytes:
        amount = f"at least {size}" if estimate else str(size)
        raise InvalidNotification(f"message: {amount} bytes exceeds MAX_MESSAGE_BYTES {max_bytes}")


def _set_header(message: EmailMessage, name: str, value: str, *, utf8: bool) -> None:
    """Write one header, choosing the writer that keeps the value exactly as readers will see it.

    - Text that folds at whitespace within 998 octets, ASCII (or UTF-8 in an address header of
      an SMTPUTF8 message): as it is, with `set_raw`. The stdlib would parse it (most of the
      build time) and RFC 2047-encode long words, which breaks headers such as
      List-Unsubscribe whose URLs must stay literal.
    - Other unstructured text (Subject, X-*): RFC 2047 encoded words throughout, via
      `email.header.Header`. The stdlib's folder drops or adds the space between encoded words
      it splits a long run into, and decodes text that merely looks like an encoded word.
    - Other structured values (a producer's Reply-To with a non-ASCII name): the stdlib.
    """
    # Whitespace at either end of a field body means nothing to readers (parsers drop the
    # leading run) and the stdlib folds a trailing run onto a line of its own, which RFC 5322
    # §3.2.2 forbids; so it is dropped here.
    value = value.strip(" \t")
    structured = name.lower() in STRUCTURED_FIELDS
    plain = value.isascii() or (structured and utf8)
    if plain and (structured or not _looks_encoded(value)):
        longest = max((len(word.encode()) for word in _WORD.findall(value)), default=0)
        if len(name) + 2 + longest <= LINE_LIMIT:
            message.set_raw(name, _fold(name, value))
            return
    if structured:
        message[name] = value
    else:
        message.set_raw(name, _encoded_words(value, name))


def _looks_encoded(text: str) -> bool:
    return "=?" in text and "?=" in text


def _encoded_words(text: str, name: str | None = None) -> str:
    """`text` as RFC 2047 encoded words (each at most 75 characters), one per folded line."""
    return Header(text, "utf-8", header_name=name).encode(linesep="\n")


def _mailbox(box: Mailbox) -> str:
    """The mailbox as RFC 5322 writes it: a quoted or encoded display name, then the address."""
    name = box.display_name
    if not name:
        return box.address
    if name.isascii() and not _looks_encoded(name):
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        # RFC 2047 §5(3) allows encoded words as a phrase; space-separated, they fold cleanly.
        phrase = _encoded_words(name).replace("\n", "")
    return f"{phrase} <{box.address}>"


def _fold(name: str, value: str) -> str:
    """Fold a header value at whitespace only (RFC 5322 §2.2.3), aiming at 78 characters a line.

    A word longer than that stays whole on a line of its own; the caller has stripped the value
    and checked that every word fits within 998 octets.
    """
    if len(name) + 2 + len(value) <= _FOLD_AT:
        return value
    lines: list[str] = []
    line = ""
    width = len(name) + 2
    for chunk in _CHUNK.findall(value):
        # A break goes before the whitespace that precedes a word, so no folded line is made
        # of whitespace alone (RFC 5322 §3.2.2); the value has no trailing whitespace.
        if line and width + len(line) + len(chunk) > _FOLD_AT and chunk[0] in " \t":
            lines.append(line)
            line, width = chunk, 0
        else:
            line += chunk
    lines.append(line)
    return "\n".join(lines)


def _set_body(message: MIMEPart, text: str | None, html: str | None) -> None:
    if text is None:
        assert html is not None  # Notification guarantees one of them
        message.set_content(html, subtype="html")
        return
    message.set_content(text)
    if html is not None:
        # A random boundary chosen here spares the generator its search of the bodies for a
        # free one; "=_" never occurs in quoted-printable or base64, 128 random bits nowhere else.
        message.make_alternative(boundary=f"=_{secrets.token_hex(16)}")
        # A MIMEPart, not an EmailMessage, so the part carries no MIME-Version of its own.
        part = MIMEPart(policy=message.policy)
        part.set_content(html, subtype="html")
        message.attach(part)
