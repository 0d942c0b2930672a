"""Tests for tasks/message.py (and workers/envelope.py): the MIME bytes built from a Notification.

Every test reads the produced bytes back with the stdlib parser, as a receiving MUA would.
"""

from __future__ import annotations

import base64
import email
import email.policy
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.message import build_message
from tasks.notification import InvalidNotification, Notification
from workers.model.envelope import OutboundMessage, outbound

NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
MAX = 26_214_400


def notification(**overrides: Any) -> Notification:
    data: dict[str, Any] = {
        "sender": "Shop <shop@example.com>",
        "to": ["Alice <alice@example.org>", "bob@example.net"],
        "cc": ["carol@example.org"],
        "bcc": ["secret-auditor@example.com"],
        "subject": "Your order has shipped",
        "text": "Hello Alice,\nyour order is on its way.\n",
        "html": "<p>Hello Alice,<br>your order is on its way.</p>\n",
    }
    data.update(overrides)
    return Notification.validate_dict(data)


def build(max_bytes: int = MAX, **overrides: Any) -> OutboundMessage:
    return build_message(
        notification(**overrides),
        message_id="m-0123abcd",
        helo_domain="mx1.example.net",
        max_bytes=max_bytes,
        now=NOW,
    )


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def outcome(**overrides: Any) -> Notification | str:
    """The notification, or the message of the InvalidNotification it raises."""
    try:
        return notification(**overrides)
    except InvalidNotification as exc:
        return str(exc)


def content(part: object) -> str:
    """A part's decoded body with the wire's CRLF turned back into Python's newline."""
    text = cast(EmailMessage, part).get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def decoded(raw_header: str) -> str:
    """RFC 2047 decoding by the legacy decoder, which follows RFC 2047 §6.2 on whitespace."""
    return str(make_header(decode_header(raw_header)))


def raw_header(data: bytes, name: str) -> str:
    value = email.message_from_bytes(data, policy=email.policy.compat32)[name]
    assert isinstance(value, str)
    return value


def assert_wire_format(data: bytes) -> None:
    """CRLF line endings only, no line above 998 octets, no line of whitespace alone."""
    assert data.endswith(b"\r\n")
    lines = data.split(b"\r\n")[:-1]
    for line in lines:
        assert b"\r" not in line
        assert b"\n" not in line
        assert len(line) <= 998
    header_block = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert all(line.strip(b" \t") for line in header_block)


def test_structural_headers() -> None:
    message = build()
    parsed = parse(message.data)
    assert parsed["Message-ID"] == "<m-0123abcd@mx1.example.net>"
    assert parsedate_to_datetime(parsed["Date"]) == NOW
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["From"].addresses[0].display_name == "Shop"
    assert parsed["From"].addresses[0].addr_spec == "shop@example.com"
    assert [a.addr_spec for a in parsed["To"].addresses] == ["alice@example.org", "bob@example.net"]
    assert parsed["To"].addresses[0].display_name == "Alice"
    assert [a.addr_spec for a in parsed["Cc"].addresses] == ["carol@example.org"]
    assert parsed["Subject"] == "Your order has shipped"
    assert not parsed.defects
    assert message.message_id == "m-0123abcd"
    assert message.sender == "shop@example.com"


def test_bcc_is_an_envelope_recipient_and_nowhere_in_the_bytes() -> None:
    source = notification()
    message = build()
    assert "secret-auditor@example.com" in source.envelope_recipients()
    assert b"secret-auditor" not in message.data
    assert b"bcc" not in message.data.lower()
    assert parse(message.data)["Bcc"] is None


def test_reply_to_is_written_with_its_names_and_reads_back() -> None:
    parsed = parse(build(reply_to=["Zoë Support <help@example.com>", "ops@bücher.example"]).data)
    assert [(a.display_name, a.addr_spec) for a in parsed["Reply-To"].addresses] == [
        ("Zoë Support", "help@example.com"),
        ("", "ops@xn--bcher-kva.example"),
    ]
    assert not parsed.defects
    assert parse(build().data)["Reply-To"] is None


def test_a_non_ascii_reply_to_local_part_makes_an_smtputf8_message() -> None:
    message = build(reply_to="用户@example.org")
    assert message.smtputf8
    parsed = email.message_from_string(message.data.decode(), policy=email.policy.default)
    assert parsed["Reply-To"].addresses[0].addr_spec == "用户@example.org"


def test_only_blind_recipients_get_the_undisclosed_recipients_group() -> None:
    parsed = parse(build(to=[], cc=[]).data)
    assert parsed["To"] == "undisclosed-recipients:;"
    assert parsed["Cc"] is None
    assert b"secret-auditor" not in build(to=[], cc=[]).data


def test_date_keeps_the_offset_of_now_and_defaults_to_the_current_time() -> None:
    paris = datetime(2026, 7, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    dated = build_message(
        notification(), message_id="m1", helo_domain="h.example", max_bytes=MAX, now=paris
    )
    assert parse(dated.data)["Date"] == "Wed, 01 Jul 2026 09:30:00 +0200"
    undated = build_message(notification(), message_id="m1", helo_domain="h.example", max_bytes=MAX)
    assert parsedate_to_datetime(parse(undated.data)["Date"]).tzinfo is not None


def test_multipart_alternative_puts_text_first_then_html() -> None:
    message = build(text="plain café\n", html="<p>rich café</p>\n")
    parsed = parse(message.data)
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert content(parts[0]) == "plain café\n"
    assert content(parts[1]) == "<p>rich café</p>\n"
    assert all(part["MIME-Version"] is None for part in parts)


def test_html_only_is_a_single_text_html_part() -> None:
    parsed = parse(build(text=None, html="<p>only html</p>\n").data)
    assert parsed.get_content_type() == "text/html"
    assert not parsed.is_multipart()
    assert content(parsed) == "<p>only html</p>\n"


def test_text_only_is_a_single_text_plain_part() -> None:
    parsed = parse(build(html=None, text="just text\n").data)
    assert parsed.get_content_type() == "text/plain"
    assert content(parsed) == "just text\n"


@pytest.mark.parametrize(
    "text",
    [
        "ASCII with a line of " + "x" * 2000 + " in it\n",
        "Grüße aus Köln, 日本語のテキスト\n" * 50,
        "\U0001f389" * 3000,
        "bare\rCR and\nLF and\r\nCRLF\n",
        ".leading dot\nFrom the start\n",
    ],
)
def test_bodies_are_seven_bit_with_crlf_and_short_lines(text: str) -> None:
    message = build(text=text, html=None)
    assert message.data.isascii()
    assert not message.eight_bit
    assert not message.smtputf8
    assert_wire_format(message.data)
    parsed = parse(message.data)
    assert parsed["Content-Transfer-Encoding"] in {"7bit", "quoted-printable", "base64"}
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    if not expected.endswith("\n"):
        expected += "\n"  # the stdlib ends every text body with a line break
    assert content(parsed) == expected


def test_non_ascii_subject_is_rfc_2047_encoded_and_round_trips() -> None:
    subject = "Grüße — ваш заказ 🎉 отправлен"
    message = build(subject=subject)
    assert message.data.isascii()
    assert b"=?utf-8?" in message.data.split(b"\r\n\r\n")[0]
    assert parse(message.data)["Subject"] == subject


def test_non_ascii_display_names_are_encoded_and_round_trip() -> None:
    message = build(sender="Søren Kierkegård <soren@example.com>", to=["Zoë 陳 <zoe@example.org>"])
    assert message.data.isascii()
    parsed = parse(message.data)
    assert parsed["From"].addresses[0].display_name == "Søren Kierkegård"
    assert parsed["To"].addresses[0].display_name == "Zoë 陳"


def test_long_non_ascii_display_name_uses_several_encoded_words_and_keeps_spaces() -> None:
    # Python's modern parser wrongly inserts a space between adjacent encoded words in a
    # phrase; RFC 2047 §6.2 says to ignore that whitespace, which the legacy decoder does.
    name = "Ωmega Δelta " * 8 + "Ünïcödé Ñame"
    message = build(to=[f"{name} <long@example.org>"])
    assert_wire_format(message.data)
    assert decoded(raw_header(message.data, "To")) == f"{name.strip()} <long@example.org>"


def test_quoted_display_name_specials_round_trip() -> None:
    parsed = parse(build(to=['"Doe, Jane \\"JD\\" (ops)" <jane@example.org>']).data)
    (address,) = parsed["To"].addresses
    assert address.display_name == 'Doe, Jane "JD" (ops)'
    assert address.addr_spec == "jane@example.org"


def test_international_domain_goes_out_as_a_label_when_local_part_is_ascii() -> None:
    message = build(to=["Bücher <info@bücher.example>"])
    assert message.data.isascii()
    assert parse(message.data)["To"].addresses[0].domain == "xn--bcher-kva.example"
    assert not message.smtputf8


def test_non_ascii_local_part_needs_smtputf8_and_keeps_bodies_seven_bit() -> None:
    message = build(to=["Chen <用户@例子.广告>"], cc=[], bcc=[], text="café\n", html=None)
    assert message.smtputf8
    assert message.eight_bit  # UTF-8 in the headers: BODY=8BITMIME goes with SMTPUTF8
    header_block, body = message.data.split(b"\r\n\r\n", 1)
    assert "用户@例子.广告".encode() in header_block
    assert body.isascii()
    assert_wire_format(message.data)
    parsed = email.message_from_string(message.data.decode(), policy=email.policy.default)
    assert parsed["To"].addresses[0].addr_spec == "用户@例子.广告"
    assert parsed["To"].addresses[0].display_name == "Chen"
    assert parsed["Content-Transfer-Encoding"] in {"quoted-printable", "base64"}


def test_extra_headers_are_written_and_long_urls_stay_literal() -> None:
    unsubscribe = "<https://example.com/unsubscribe?token=" + "t" * 150 + ">"
    message = build(
        headers={
            "List-Unsubscribe": f"{unsubscribe}, <mailto:unsub@example.com>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Reply-To": "Support Team <help@example.com>",
            "X-Campaign": "spring sale — 20 % off",
        }
    )
    assert_wire_format(message.data)
    assert unsubscribe.encode() in message.data  # not turned into encoded words
    parsed = parse(message.data)
    assert parsed["List-Unsubscribe"] == f"{unsubscribe}, <mailto:unsub@example.com>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert parsed["X-Campaign"] == "spring sale — 20 % off"


def test_text_that_looks_like_an_encoded_word_reads_literally() -> None:
    literal = "=?utf-8?q?not_decoded?= stays as typed"
    parsed = parse(build(subject=literal, headers={"X-Note": literal}).data)
    assert parsed["Subject"] == literal
    assert parsed["X-Note"] == literal


@pytest.mark.parametrize(
    "subject",
    [
        "ok Bcc: eve@example.net",  # header-looking text without a line break is just text
        "To: eve@example.net",
        "a" * 2000,  # one long word: encoded so that no line exceeds 998 octets
        "word " * 400,
    ],
)
def test_subjects_that_look_dangerous_stay_one_header(subject: str) -> None:
    message = build(subject=subject)
    assert_wire_format(message.data)
    parsed = parse(message.data)
    assert parsed["Subject"] == subject.strip()
    assert parsed["Bcc"] is None
    assert [a.addr_spec for a in parsed["To"].addresses] == ["alice@example.org", "bob@example.net"]


@pytest.mark.parametrize(
    "attempt",
    [
        {"subject": "Hi\r\nBcc: eve@example.net"},
        {"subject": "Hi\nBcc: eve@example.net"},
        {"subject": "Hi\rBcc: eve@example.net"},
        {"to": ["Eve\r\nBcc: eve@example.net <alice@example.org>"]},
        {"sender": "shop@example.com\r\nBcc: eve@example.net"},
        {"headers": {"X-Tag": "x\r\nBcc: eve@example.net"}},
        {"headers": {"X-Tag\r\nBcc": "eve@example.net"}},
        {"headers": {"Bcc": "eve@example.net"}},
    ],
)
def test_header_injection_is_refused_before_any_message_exists(attempt: dict[str, Any]) -> None:
    with pytest.raises(InvalidNotification) as caught:
        notification(**attempt)
    field = next(iter(attempt))
    assert str(caught.value).startswith(field)


def test_size_limit_allows_exactly_max_and_refuses_one_byte_more() -> None:
    size = build().size  # the boundary is random, but always the same length
    assert build(max_bytes=size).size == size
    with pytest.raises(InvalidNotification) as caught:
        build(max_bytes=size - 1)
    assert str(caught.value) == f"message: {size} bytes exceeds MAX_MESSAGE_BYTES {size - 1}"


def test_huge_input_is_refused_from_the_estimate_before_building() -> None:
    text = "a" * 31_457_280
    with pytest.raises(InvalidNotification, match=r"^message: at least \d+ bytes exceeds") as err:
        build(text=text, html=None)
    assert str(err.value).endswith("exceeds MAX_MESSAGE_BYTES 26214400")


def test_encoding_overhead_counts_towards_the_limit() -> None:
    # 100 000 non-ASCII characters are under the limit as text, far above it once encoded.
    with pytest.raises(InvalidNotification, match=r"^message: \d+ bytes exceeds"):
        build(max_bytes=150_000, text="é" * 100_000, html=None)


PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40  # binary, as a PDF is


def test_attachments_go_in_a_multipart_mixed_after_the_body_in_76_column_base64() -> None:
    message = build(attachments=[{"filename": "invoice.pdf", "content": PDF}])
    assert_wire_format(message.data)
    parsed = parse(message.data)
    assert parsed.get_content_type() == "multipart/mixed"
    body, attached = parsed.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert (attached.get_content_type(), attached.get_filename()) == (
        "application/pdf",
        "invoice.pdf",
    )
    assert attached.get_content_disposition() == "attachment"
    assert attached["Content-Transfer-Encoding"] == "base64"
    assert attached.get_content() == PDF
    encoded = message.data.split(b"Content-Transfer-Encoding: base64\r\n\r\n")[1]
    *full, last = encoded.split(b"\r\n\r\n--")[0].split(b"\r\n")
    assert {len(line) for line in full} == {76}
    assert 0 < len(last) <= 76
    assert base64.b64decode(b"".join([*full, last])) == PDF


def test_inline_parts_sit_with_the_html_in_a_multipart_related() -> None:
    logo = {"filename": "logo.png", "content": b"\x89PNG", "inline": True, "content_id": "logo"}
    message = build(
        html='<p><img src="cid:logo"></p>\n',
        attachments=[logo, {"filename": "terms.txt", "content": b"terms\n"}],
    )
    parsed = parse(message.data)
    alternative, terms = parsed.iter_parts()
    text, related = alternative.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert (related.get_content_type(), related.get_param("type")) == (
        "multipart/related",
        "text/html",
    )
    html, image = related.iter_parts()
    assert content(html) == '<p><img src="cid:logo"></p>\n'
    assert (image["Content-ID"], image.get_content_disposition()) == ("<logo>", "inline")
    assert image.get_content() == b"\x89PNG"
    assert (terms.get_filename(), terms.get_content()) == ("terms.txt", "terms\n")


def test_html_only_with_an_inline_part_is_related_without_mixed() -> None:
    logo = {"filename": "l.gif", "content": b"GIF89a", "inline": True, "content_id": "l@x"}
    parsed = parse(build(text=None, html='<img src="cid:l@x">', attachments=[logo]).data)
    assert parsed.get_content_type() == "multipart/related"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/html", "image/gif"]


def test_non_ascii_filenames_use_rfc_2231_and_the_rfc_2047_name_outlook_reads() -> None:
    name = "Rechnung März 2026 — Übersicht für Zoë (endgültig, mit allen Anlagen).pdf"
    message = build(attachments=[{"filename": name, "content": b"%PDF"}])
    assert_wire_format(message.data)
    raw = message.data.decode("ascii")
    assert "filename*0*=utf-8''Rechnung%20M%C3%A4rz" in raw  # continued: it is long
    assert "filename*1*=" in raw
    assert ' name="=?utf-8?b?' in raw
    [attached] = parse(message.data).iter_attachments()
    assert attached.get_filename() == name
    assert attached["Content-Type"].params["name"] == name
    legacy = email.message_from_bytes(message.data, policy=email.policy.compat32)
    [legacy_part] = [p for p in legacy.walk() if p.get_filename()]
    assert legacy_part.get_filename() == name
    assert decoded(str(legacy_part.get_param("name"))) == name  # as Outlook decodes it


def test_attachments_count_towards_the_size_limit() -> None:
    small = build().size
    with pytest.raises(InvalidNotification, match=r"^message: at least \d+ bytes exceeds"):
        build(max_bytes=small + 10_000, attachments=[{"filename": "a", "content": b"x" * 9000}])
    with_attachment = build(attachments=[{"filename": "a", "content": b"x" * 900}])
    assert build(
        max_bytes=with_attachment.size, attachments=[{"filename": "a", "content": b"x" * 900}]
    )
    with pytest.raises(InvalidNotification, match=r"^message: \d+ bytes exceeds"):
        build(
            max_bytes=with_attachment.size - 1,
            attachments=[{"filename": "a", "content": b"x" * 900}],
        )


@pytest.mark.parametrize(
    ("message_id", "helo"),
    [("has space", "h.example"), ("m1", "bad host"), ("<m1>", "h.example"), ("m1", "")],
)
def test_message_id_parts_must_be_dot_atom_text(message_id: str, helo: str) -> None:
    with pytest.raises(ValueError, match="msg-id"):
        build_message(notification(), message_id=message_id, helo_domain=helo, max_bytes=MAX)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_message(
            notification(),
            message_id="m1",
            helo_domain="h.example",
            max_bytes=MAX,
            now=datetime(2026, 1, 1),
        )


def test_outbound_works_out_eight_bit_and_size() -> None:
    ascii_message = outbound("m1", "a@example.com", b"Subject: x\r\n\r\nhi\r\n", smtputf8=False)
    assert not ascii_message.eight_bit
    assert ascii_message.size == 18
    utf8_message = outbound("m2", "a@example.com", "Subject: é\r\n\r\n".encode(), smtputf8=True)
    assert utf8_message.eight_bit
    assert utf8_message.smtputf8
    assert utf8_message.size == 15


PRINTABLE = st.characters(codec="utf-8")  # every character but lone surrogates


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.text(PRINTABLE, max_size=300) | st.text(" \tab=?é中", max_size=300))
def test_any_subject_round_trips_or_is_refused_cleanly(subject: str) -> None:
    source = outcome(subject=subject)
    if isinstance(source, str):
        assert source.startswith("subject: ")
        assert "\n" not in source
        return
    message = build_message(
        source, message_id="m1", helo_domain="h.example", max_bytes=MAX, now=NOW
    )
    assert message.data.isascii()
    assert_wire_format(message.data)
    # Whitespace at either end of a header means nothing and is not kept (RFC 5322 §3.2.2).
    assert parse(message.data)["Subject"] == subject.strip(" \t")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(PRINTABLE, max_size=120))
def test_any_display_name_round_trips_or_is_refused_cleanly(name: str) -> None:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    source = outcome(to=[f'"{quoted}" <alice@example.org>'])
    if isinstance(source, str):
        assert source.startswith("to[0]: ")
        return
    message = build_message(
        source, message_id="m1", helo_domain="h.example", max_bytes=MAX, now=NOW
    )
    assert message.data.isascii()
    assert_wire_format(message.data)
    expected = " ".join(name.split())
    shown = f"{expected} <alice@example.org>" if expected else "alice@example.org"
    if expected.isascii() and not ("=?" in expected and "?=" in expected):
        assert parse(message.data)["To"].addresses[0].display_name == expected
    else:
        assert decoded(raw_header(message.data, "To")) == shown
