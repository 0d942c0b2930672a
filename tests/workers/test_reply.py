"""Reply parsing: enhanced codes split off the text (RFC 3463), multi-line replies folded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.model import reply as replies
from workers.model.reply import Reply, Step, parse_reply


@pytest.mark.parametrize(
    ("code", "message", "enhanced", "text"),
    [
        (250, "2.1.0 Ok", "2.1.0", "Ok"),
        (
            550,
            "5.1.1 <bob@x.test>: Recipient address rejected",
            "5.1.1",
            "<bob@x.test>: Recipient address rejected",
        ),
        (451, "4.7.1 Greylisted, try again", "4.7.1", "Greylisted, try again"),
        (250, "Ok", "", "Ok"),
        (421, "mx.test closing connection", "", "mx.test closing connection"),
        # a class that does not match the basic code is not an enhanced code (RFC 3463 §2)
        (550, "4.1.1 mismatched", "", "4.1.1 mismatched"),
        (250, "2.0.0", "2.0.0", ""),
        (
            552,
            "5.3.4 Message size exceeds fixed limit",
            "5.3.4",
            "Message size exceeds fixed limit",
        ),
        (250, "2.100.999 wide", "2.100.999", "wide"),
        (250, "2.1000.0 too wide", "", "2.1000.0 too wide"),
        (250, "2.1.0x not separated", "", "2.1.0x not separated"),
    ],
)
def test_parse_reply_splits_enhanced_code(
    code: int, message: str, enhanced: str, text: str
) -> None:
    parsed = parse_reply(code, message, Step.RCPT_TO)
    assert parsed == Reply(code, enhanced, text, Step.RCPT_TO)


def test_multiline_reply_is_folded_to_one_line() -> None:
    parsed = parse_reply(250, "2.0.0 first line\n second line\r\n", Step.DATA)
    assert parsed.enhanced == "2.0.0"
    assert parsed.text == "first line second line"
    assert "\n" not in str(parsed)


def test_str_joins_code_enhanced_and_text() -> None:
    assert str(Reply(451, "4.7.1", "greylisted", Step.RCPT_TO)) == "451 4.7.1 greylisted"
    assert str(Reply(250, "", "ok", Step.QUIT)) == "250 ok"


@given(st.integers(200, 599), st.text(alphabet=st.characters(codec="utf-8")))
def test_parse_reply_never_raises_and_keeps_one_line(code: int, message: str) -> None:
    parsed = parse_reply(code, message, Step.MAIL_FROM)
    assert "\n" not in parsed.text
    assert "\r" not in parsed.text
    assert parsed.enhanced == "" or parsed.enhanced[0] == str(code)[0]


@pytest.mark.parametrize(
    ("made", "code", "enhanced", "step"),
    [
        (replies.no_answer("mx.test", "refused"), 421, "4.4.1", Step.OPEN_SESSION),
        (replies.connection_dropped("mx.test", Step.DATA, "eof"), 421, "4.4.2", Step.DATA),
        (replies.tls_unavailable("relay.test"), 451, "4.7.4", Step.OPEN_SESSION),
        (replies.tls_failed("relay.test", "self-signed"), 421, "4.7.5", Step.OPEN_SESSION),
        (replies.dns_temporary("x.test", "timeout"), 451, "4.4.3", Step.RESOLVE_MX),
        (replies.no_such_domain("x.test"), 550, "5.1.2", Step.RESOLVE_MX),
        (replies.null_mx("x.test"), 556, "5.1.10", Step.RESOLVE_MX),
        (replies.message_too_big("mx.test", 10, 5), 552, "5.3.4", Step.MAIL_FROM),
        (replies.smtputf8_unavailable("mx.test"), 553, "5.6.7", Step.MAIL_FROM),
    ],
)
def test_synthetic_replies_carry_rfc3463_codes(
    made: Reply, code: int, enhanced: str, step: Step
) -> None:
    assert (made.code, made.enhanced, made.step) == (code, enhanced, step)
    assert made.text


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ("2.0.0 \x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("bell\x07 nul\x00 del\x7f", "bell\\x07 nul\\x00 del\\x7f"),
        # bytes that were not UTF-8 (decoded with surrogateescape) show as the bytes they were
        (b"raw \xff\xfe".decode("utf-8", "surrogateescape"), "raw \\xff\\xfe"),
        ("c1 \x9b31m", "c1 \\x9b31m"),
        ("zoë ok", "zoë ok"),
    ],
)
def test_parse_reply_escapes_control_characters(message: str, text: str) -> None:
    parsed = parse_reply(250, message, Step.DATA)
    assert parsed.text == text
    assert parsed.text.isprintable()


def test_parse_reply_keeps_a_bounded_excerpt() -> None:
    parsed = parse_reply(550, "5.1.1 " + "x" * 100_000, Step.RCPT_TO)
    assert parsed.enhanced == "5.1.1"
    assert len(parsed.text) <= replies.MAX_TEXT + 3
    assert parsed.text.startswith("xxx")
    assert parsed.text.endswith("...")


@given(st.text())
def test_printable_is_printable_and_bounded(text: str) -> None:
    shown = replies.printable(text)
    assert shown.isprintable()
    assert len(shown) <= replies.MAX_TEXT + 3


def test_protocol_error_is_a_transient_421_4_5_0() -> None:
    made = replies.protocol_error("mx.test", Step.DATA, "garbage \x1b[2J")
    assert (made.code, made.enhanced, made.step) == (421, "4.5.0", Step.DATA)
    assert made.text == "protocol error from mx.test: garbage \\x1b[2J"
