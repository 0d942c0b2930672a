"""Every reply of the submission listener carries an RFC 3463 enhanced status code."""

from __future__ import annotations

import re
from pathlib import Path

import aiosmtpd.smtp
import pytest

from tasks.submission import replies

_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3} ")
_PUSHED = re.compile(r"""push\(\s*f?['"]([2-5][0-9]{2} [^'"]*)['"]""")


def aiosmtpd_replies() -> list[str]:
    """Every literal reply aiosmtpd's SMTP class can push, read from its source."""
    source = Path(aiosmtpd.smtp.__file__).read_text()
    found = set(_PUSHED.findall(source)) | {"500 Error: ({}) {}"}
    return sorted(found)


def test_the_source_scan_finds_aiosmtpd_replies() -> None:
    found = aiosmtpd_replies()
    assert "552 Error: Too much mail data" in found
    assert "530 Must issue a STARTTLS command first" in found
    assert len(found) > 30


@pytest.mark.parametrize("line", aiosmtpd_replies())
def test_every_refusal_aiosmtpd_can_send_gets_an_enhanced_code(line: str) -> None:
    out = replies.enhance(line)
    if line[0] in "45":
        assert _ENHANCED.match(out[4:]), out
        assert out[:3] == line[:3]
    else:
        assert out == line or _ENHANCED.match(out[4:])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("552 Error: Too much mail data", "552 5.3.4 Message too big for system"),
        (
            "552 Error: message size exceeds fixed maximum message size",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        (
            "530 Must issue a STARTTLS command first",
            "530 5.7.0 Must issue a STARTTLS command first",
        ),
        (
            '500 Error: command "XYZ" not recognized',
            '500 5.5.1 Error: command "XYZ" not recognized',
        ),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.2 Syntax: MAIL FROM: <address>"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        (
            "555 MAIL FROM parameters not recognized",
            "555 5.5.4 MAIL FROM parameters not recognized",
        ),
        ("599 Something new", "599 5.0.0 Something new"),
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        # Left alone: ours (they have a code), the greeting, EHLO lines, challenges, 354.
        (replies.TOO_MANY_RECIPIENTS, replies.TOO_MANY_RECIPIENTS),
        ("220 mx.example Mailroom ESMTP submission", "220 mx.example Mailroom ESMTP submission"),
        ("250-SIZE 1000", "250-SIZE 1000"),
        ("250 HELP", "250 HELP"),
        ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ],
)
def test_enhance(line: str, expected: str) -> None:
    assert replies.enhance(line) == expected


def test_the_listeners_own_replies_all_have_enhanced_codes() -> None:
    own = [
        value
        for name, value in vars(replies).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, str)
    ]
    assert len(own) > 15
    for reply in own:
        assert re.fullmatch(r"[2-5][0-9]{2} ", reply[:4]), reply
        assert _ENHANCED.match(reply[4:]), reply
        assert reply[0] == reply[4], reply  # class of the code and of the enhanced code agree
