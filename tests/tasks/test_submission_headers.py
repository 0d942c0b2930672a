"""What the listener changes in a submitted message: Received on top, Bcc out, Message-ID and
Date when missing; every other byte as the client sent it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tasks.submission.headers import Trace, complete, received_field

NOW = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
TRACE = Trace(helo="app.example.test", peer_ip="192.0.2.7", by="mailroom.example.test")
RECEIVED = (
    b"Received: from app.example.test ([192.0.2.7])\r\n"
    b"\tby mailroom.example.test (Mailroom) with ESMTPSA id abc123;\r\n"
    b"\tSat, 01 Mar 2025 12:30:00 +0000\r\n"
)
ADDED = b"Message-ID: <abc123@example.test>\r\nDate: Sat, 01 Mar 2025 12:30:00 +0000\r\n"


def run(data: bytes) -> bytes:
    return complete(data, trace=TRACE, message_id="abc123", id_domain="example.test", now=NOW)


def test_received_on_top_message_id_and_date_at_the_end_of_the_header() -> None:
    data = b"From: a@example.test\r\nSubject: Hi\r\n\r\nbody\r\n"
    assert run(data) == (
        RECEIVED + b"From: a@example.test\r\nSubject: Hi\r\n" + ADDED + b"\r\nbody\r\n"
    )


def test_existing_message_id_and_date_are_kept_as_they_are() -> None:
    data = b"message-id: <own@app.test>\r\nDATE: Fri, 28 Feb 2025 10:00:00 +0100\r\n\r\nx\r\n"
    assert run(data) == RECEIVED + data


def test_every_bcc_field_is_removed_with_its_continuation_lines() -> None:
    data = (
        b"From: a@example.test\r\n"
        b"Bcc: secret@example.test,\r\n"
        b"\tother@example.test\r\n"
        b"To: b@example.test\r\n"
        b"BCC : third@example.test\r\n"
        b"Subject: folded\r\n"
        b" subject\r\n"
        b"\r\n"
        b"Bcc: this is the body, not a header\r\n"
    )
    out = run(data)
    assert b"secret@" not in out
    assert b"other@" not in out
    assert b"third@" not in out
    assert b"Subject: folded\r\n subject\r\n" in out
    assert out.endswith(b"\r\n\r\nBcc: this is the body, not a header\r\n")


@pytest.mark.parametrize(
    "body",
    [
        b"\r\n.\r\n..dots\r\n",
        b"bare\nlf and trailing spaces  \r\n",
        "8-bit: Zoë\r\n".encode(),
        b"no final line end",
    ],
)
def test_the_body_is_kept_byte_for_byte(body: bytes) -> None:
    data = b"Subject: s\r\n\r\n" + body
    assert run(data).endswith(b"\r\n\r\n" + body)


def test_a_message_that_is_all_body_gets_a_header_section_in_front() -> None:
    out = run(b"just some text\r\nno header at all\r\n")
    assert out == RECEIVED + ADDED + b"just some text\r\nno header at all\r\n"


def test_a_header_section_without_a_final_line_end_is_closed() -> None:
    assert run(b"Subject: s") == RECEIVED + b"Subject: s\r\n" + ADDED


@pytest.mark.parametrize(
    ("helo", "peer", "from_part"),
    [
        ("[192.0.2.7]", "192.0.2.7", b"from [192.0.2.7] ([192.0.2.7])"),
        ("[IPv6:2001:db8::1]", "2001:db8::1", b"from [IPv6:2001:db8::1] ([IPv6:2001:db8::1])"),
        ("bad helo!", "192.0.2.7", b"from unknown ([192.0.2.7])"),
        ("zoë.example", "192.0.2.7", b"from unknown ([192.0.2.7])"),
    ],
)
def test_received_names_the_client_safely(helo: str, peer: str, from_part: bytes) -> None:
    field = received_field(Trace(helo=helo, peer_ip=peer, by="mx.test"), "id1", NOW)
    assert field.startswith(b"Received: " + from_part + b"\r\n\tby mx.test ")
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
