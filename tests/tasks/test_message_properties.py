"""Property tests of tasks/message.py: any valid notification becomes correct MIME, read back whole.

Hypothesis draws senders, recipients (display names, IDNA domains, quoted and non-ASCII local
parts), subjects, extra headers and bodies; each built message is parsed back with the stdlib's
modern parser (`email.policy.default`), as a receiving MUA would, and must give back every
header, recipient and body, with CRLF line breaks only, no line above 998 octets, bodies in 7 bits
and headers in ASCII unless SMTPUTF8 is needed.
"""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.message import build_message
from tasks.notification import Attachment, InvalidNotification, Mailbox, Notification
from workers.model.envelope import OutboundMessage

NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
MAX = 26_214_400
HELO = "mx1.example.net"
LONG_NAME = "X-" + "Long-Field-Name-" * 5  # leaves no room for an encoded word on its line

TEXT_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")  # NUL is refused
# Header text without the controls and line breaks validation refuses (a few still come from
# TEXT_CHARS, to check they are refused cleanly).
HEADER_CHARS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"))
LOCAL_WORD = st.text("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789+_-", min_size=1, max_size=10)
LOCAL = (
    st.lists(LOCAL_WORD, min_size=1, max_size=3).map(".".join)
    | st.sampled_from(['"john doe"', '"a\\"b"', "zoë", "用户"])  # quoted, RFC 6531 UTF-8
)
ASCII_DOMAINS = ["example.org", "EXAMPLE.net", "mail.example.com"]
DOMAIN = st.sampled_from([*ASCII_DOMAINS, "bücher.example", "例子.广告"])
DISPLAY_NAME = (
    st.none()
    | st.text(HEADER_CHARS, max_size=60)
    | st.text(TEXT_CHARS, max_size=10)
    | st.sampled_from(["Ωmega Δelta " * 10, "=?utf-8?q?looks_encoded?=", "a" * 950])
)
HEADER_VALUE = st.text(HEADER_CHARS, max_size=200) | st.sampled_from(
    [
        "<https://example.com/unsubscribe?token=" + "t" * 150 + ">",
        "word " * 60,
        "b" * 900,  # a word longer than a line: on a line of its own
        "=?utf-8?q?not_decoded?= stays literal",
    ]
)
BODY = (
    st.none()
    | st.text(TEXT_CHARS, max_size=400)
    | st.sampled_from(["x" * 1200 + "\n", "Grüße, 日本語\r\n" * 40, ".\nFrom here\r\n", ""])
)


@st.composite
def mailboxes(draw: st.DrawFn, ascii_address: bool = False) -> str:
    local = draw(
        st.lists(LOCAL_WORD, min_size=1, max_size=3).map(".".join) if ascii_address else LOCAL
    )
    address = f"{local}@{draw(st.sampled_from(ASCII_DOMAINS) if ascii_address else DOMAIN)}"
    name = draw(DISPLAY_NAME)
    if name is None:
        return address
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{address}>'


# File names: any header text but path separators, and the long or odd ones readers trip on.
FILENAME = st.text(
    st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"), exclude_characters="/\\"
    ),
    min_size=1,
    max_size=40,
).filter(lambda name: name.strip() and name not in (".", "..")) | st.sampled_from(
    [
        "Rechnung März 2026 — Übersicht für Zoë (endgültig).pdf",
        "a" * 255,
        "報告書" * 85,
        'quote " and back\\slash.txt',
        "=?utf-8?b?bG9va3M=?= encoded.txt",
        "%41 percent 'quote' *star*.csv",
    ]
)
CONTENT_TYPE = st.none() | st.sampled_from(
    [
        "application/pdf",
        "image/png",
        "text/plain",
        "text/csv; charset=utf-8",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ]
)


@st.composite
def attachments(draw: st.DrawFn, html: bool) -> list[dict[str, Any]]:
    drawn: list[dict[str, Any]] = []
    for index in range(draw(st.integers(0, 3))):
        attachment: dict[str, Any] = {
            "filename": draw(FILENAME),
            "content": draw(st.binary(max_size=300)),
            "content_type": draw(CONTENT_TYPE),
        }
        if html and draw(st.booleans()):
            attachment |= {"inline": True, "content_id": f"part{index}@example.com"}
        drawn.append(attachment)
    return drawn


@st.composite
def notifications(draw: st.DrawFn) -> dict[str, Any]:
    names = ["X-Tag", "List-Unsubscribe", "Keywords", LONG_NAME]
    headers = draw(st.dictionaries(st.sampled_from(names), HEADER_VALUE, max_size=3))
    if draw(st.booleans()):
        # The stdlib writes a Reply-To (tasks.message leaves structured extras to it), and it
        # has no IDNA: it is given the ASCII addresses it can write.
        headers["Reply-To"] = draw(mailboxes(ascii_address=True))
    text, html = draw(BODY), draw(BODY)
    reply_to = [] if "Reply-To" in headers else draw(st.lists(mailboxes(), max_size=2))
    return {
        "reply_to": reply_to,
        "attachments": draw(attachments(html=bool(html))),
        "sender": draw(mailboxes()),
        "to": draw(st.lists(mailboxes(), max_size=3)),
        "cc": draw(st.lists(mailboxes(), max_size=2)),
        "bcc": draw(st.lists(mailboxes(), max_size=2)),
        "subject": draw(st.text(HEADER_CHARS, max_size=200) | st.text(TEXT_CHARS, max_size=20)),
        "text": text if text is not None or html is not None else "fallback body",
        "html": html,
        "headers": headers,
    }


def outcome(fields: dict[str, Any]) -> Notification | str:
    """The notification, or the message of the InvalidNotification it raises."""
    try:
        return Notification.validate_dict(fields)
    except InvalidNotification as exc:
        return str(exc)


def parse(message: OutboundMessage) -> EmailMessage:
    if message.smtputf8:
        # UTF-8 header fields (RFC 6532): read as text, as an SMTPUTF8 receiver does.
        text = message.data.decode()
        return email.message_from_string(text, policy=email.policy.default)
    return email.message_from_bytes(message.data, policy=email.policy.default)


def unfolded_raw(data: bytes, name: str) -> str:
    """The field's raw value with its folds (CRLF before whitespace) removed."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    match = re.search(rf"^{re.escape(name)}:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.M)
    assert match is not None, name
    return match[1].replace("\r\n", "").strip(" \t")


def body_text(text: str) -> str:
    """What a reader gets back: CR, LF and CRLF as one line break, and a final one."""
    normal = text.replace("\r\n", "\n").replace("\r", "\n")
    return normal if normal.endswith("\n") else normal + "\n"


def content(part: EmailMessage) -> str:
    value = part.get_content()
    assert isinstance(value, str)
    return value.replace("\r\n", "\n")


def plain_name(name: str) -> bool:
    """Whether the display name is written as a quoted string (else as encoded words)."""
    phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    too_long = any(len(word) > 900 for word in phrase.split(" "))  # tasks.message's limit
    return name.isascii() and not ("=?" in name and "?=" in name) and not too_long


def check_mailboxes(message: OutboundMessage, parsed: EmailMessage, field: str, boxes: Any) -> None:
    header = parsed[field]
    assert [a.addr_spec for a in header.addresses] == [box.address for box in boxes]
    raw = unfolded_raw(message.data, field)
    position = 0  # mailboxes are written in order, and one address may come twice
    for box, address in zip(boxes, header.addresses, strict=True):
        box = cast(Mailbox, box)
        spec = re.escape(box.address)
        # An encoded phrase, if any, then "<address>"; or the bare address (no display name).
        written = re.compile(
            rf"(?:((?:=\?utf-8\?b\?[A-Za-z0-9+/=]*\?= ?)+) )?<{spec}>|(?<![^\s,]){spec}(?![^\s,])"
        )
        match = written.search(raw, position)
        assert match is not None, raw
        position = match.end()
        if not box.display_name or plain_name(box.display_name):
            assert address.display_name == box.display_name
            continue
        # The modern parser puts a space between adjacent encoded words of a phrase, which
        # RFC 2047 §6.2 says to ignore; the legacy decoder follows the RFC.
        assert match[1] is not None, raw
        assert str(make_header(decode_header(match[1]))) == box.display_name


def assert_wire_format(message: OutboundMessage) -> None:
    data = message.data
    assert data.endswith(b"\r\n")
    head, body = data.split(b"\r\n\r\n", 1)
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")  # CRLF only
    for line in data.split(b"\r\n"):
        assert len(line) <= 998
    for line in head.split(b"\r\n"):
        assert line.strip(b" \t")  # no line of whitespace alone (RFC 5322 §3.2.2)
    assert body.isascii()  # 7-bit bodies, always
    assert all(len(line) <= 78 for line in body.split(b"\r\n"))
    assert head.isascii() or message.smtputf8
    assert message.eight_bit == (not data.isascii())


def check_body(parsed: EmailMessage, source: Notification) -> None:
    """The bodies, and every attachment with its name, type and exact bytes, where they belong."""
    files = [a for a in source.attachment_list if not a.inline]
    inline = [a for a in source.attachment_list if a.inline]
    body = parsed
    if files:
        assert parsed.get_content_type() == "multipart/mixed"
        body, *file_parts = cast(list[EmailMessage], list(parsed.iter_parts()))
        check_attachments(file_parts, files, "attachment")
    if source.text is not None and source.html is not None:
        assert body.get_content_type() == "multipart/alternative"
        text_part, html_part = cast(list[EmailMessage], list(body.iter_parts()))
        assert text_part.get_content_type() == "text/plain"
        assert content(text_part) == body_text(source.text)
    else:
        html_part = body
        if source.text is not None:
            assert body.get_content_type() == "text/plain"
            assert content(body) == body_text(source.text)
            return
    assert source.html is not None
    if inline:
        assert html_part.get_content_type() == "multipart/related"
        assert html_part.get_param("type") == "text/html"
        html_part, *inline_parts = cast(list[EmailMessage], list(html_part.iter_parts()))
        check_attachments(inline_parts, inline, "inline")
    assert html_part.get_content_type() == "text/html"
    assert content(html_part) == body_text(source.html)


def check_attachments(parts: list[EmailMessage], expected: list[Attachment], how: str) -> None:
    assert len(parts) == len(expected)
    for part, attachment in zip(parts, expected, strict=True):
        assert not part.defects
        kind, _, charset = attachment.content_type.partition("; charset=")
        assert part.get_content_type() == kind
        assert part.get_content_charset() == (charset or None)
        assert part.get_content_disposition() == how
        assert part.get_filename() == attachment.filename  # RFC 2231 filename*
        assert part["Content-Type"].params["name"] == attachment.filename  # RFC 2047, Outlook's
        # The exact bytes, whatever the type (get_content would decode text/* as text).
        assert part.get_payload(decode=True) == attachment.content
        if attachment.content_id is None:
            assert part["Content-ID"] is None
        else:
            assert part["Content-ID"] == f"<{attachment.content_id}>"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=notifications())
def test_any_notification_reads_back_whole(fields: dict[str, Any]) -> None:
    source = outcome(fields)
    if isinstance(source, str):
        assert "\n" not in source  # refused with one line
        return
    message = build_message(source, message_id="m-1", helo_domain=HELO, max_bytes=MAX, now=NOW)
    assert_wire_format(message)
    assert message.smtputf8 == source.needs_smtputf8()
    parsed = parse(message)

    assert not parsed.defects
    assert parsed["Message-ID"] == f"<m-1@{HELO}>"
    assert parsedate_to_datetime(parsed["Date"]) == NOW
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Subject"] == source.subject.strip(" \t")
    assert parsed["Bcc"] is None
    check_mailboxes(message, parsed, "From", [source.sender_mailbox])
    if source.to_mailboxes:
        check_mailboxes(message, parsed, "To", source.to_mailboxes)
    elif not source.cc_mailboxes:
        assert parsed["To"] == "undisclosed-recipients:;"
    if source.cc_mailboxes:
        check_mailboxes(message, parsed, "Cc", source.cc_mailboxes)
    else:
        assert parsed["Cc"] is None
    if source.reply_to_mailboxes:
        check_mailboxes(message, parsed, "Reply-To", source.reply_to_mailboxes)
    for name, value in source.headers.items():
        if name == "Reply-To":
            [expected] = Notification.validate_dict({**fields, "to": [value]}).to_mailboxes
            written = [a.addr_spec.lower() for a in parsed[name].addresses]
            assert written == [expected.address.lower()]
        else:
            assert parsed[name] == value.strip(" \t"), name

    check_body(parsed, source)
    shown = [
        source.sender_mailbox,
        *source.to_mailboxes,
        *source.cc_mailboxes,
        *source.reply_to_mailboxes,
    ]
    shown_addresses = {box.address for box in shown}
    head = message.data.split(b"\r\n\r\n", 1)[0].decode()
    in_head = set(re.findall(r"[^\s<>,;:]+@[^\s<>,;:]+", head))
    for address in source.envelope_recipients():
        extra = any(address in value for value in source.headers.values())
        if address not in shown_addresses and not extra:
            assert address not in in_head  # a Bcc recipient stays blind


@pytest.mark.parametrize(
    "value", ["Grüße aus Köln", "é" * 300, "b" * 800, "=?utf-8?q?x?= y", "ascii words " * 10]
)
def test_a_long_field_name_keeps_its_value_readable(value: str) -> None:
    source = Notification.validate_dict(
        {"sender": "a@example.org", "to": ["b@example.org"], "subject": "s", "text": "t"}
        | {"headers": {LONG_NAME: value}}
    )
    message = build_message(source, message_id="m-1", helo_domain=HELO, max_bytes=MAX, now=NOW)
    assert_wire_format(message)
    assert parse(message)[LONG_NAME] == value.strip()


def test_a_non_ascii_reply_to_is_encoded_by_the_stdlib_and_reads_back() -> None:
    source = Notification.validate_dict(
        {"sender": "a@example.org", "to": ["b@example.org"], "subject": "s", "text": "t"}
        | {"headers": {"Reply-To": "Zoë Support <help@example.org>"}}
    )
    message = build_message(source, message_id="m-1", helo_domain=HELO, max_bytes=MAX, now=NOW)
    assert_wire_format(message)
    [address] = parse(message)["Reply-To"].addresses
    assert (address.display_name, address.addr_spec) == ("Zoë Support", "help@example.org")


def test_the_body_encoding_follows_the_text() -> None:
    def encoding(text: str) -> str:
        source = Notification.validate_dict(
            {"sender": "a@example.org", "to": ["b@example.org"], "subject": "s", "text": text}
        )
        built = build_message(source, message_id="m1", helo_domain=HELO, max_bytes=MAX, now=NOW)
        return str(parse(built)["Content-Transfer-Encoding"])

    assert encoding("short ASCII lines\nstay as they are\n") == "7bit"
    assert encoding("an ASCII line longer than 78 characters " * 3) == "quoted-printable"
    assert encoding("mostly ASCII, café\n") == "quoted-printable"
    assert encoding("日本語のテキスト\n" * 5) == "base64"
