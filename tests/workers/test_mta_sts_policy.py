"""MTA-STS text (RFC 8461 §3.1, §3.2, §4.1): the TXT record, the policy file, MX matching."""

from __future__ import annotations

import pytest

from workers.delivery.mta_sts_policy import (
    MAX_AGE_LIMIT,
    Malformed,
    Mode,
    Policy,
    parse_policy,
    parse_record,
)

GOOD = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.mail.example.com\r\n"
    "max_age: 86400\r\n"
)


def test_policy_with_crlf_lines_parses() -> None:
    assert parse_policy(GOOD) == Policy(
        Mode.ENFORCE, 86400, ("mx1.example.com", "*.mail.example.com")
    )


def test_policy_with_lf_lines_unknown_fields_and_spaces_parses() -> None:
    text = "version:STSv1\nmode:  testing \nextension: ignored\nmx: MX.Example.COM.\nmax_age:0\n"
    assert parse_policy(text) == Policy(Mode.TESTING, 0, ("mx.example.com",))


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 60\n") == Policy(Mode.NONE, 60, ())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("mode: enforce\nmx: a.example\nmax_age: 1\n", "policy version is not STSv1"),
        (
            "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
            "policy version is not STSv1",
        ),
        ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "policy mode is not"),
        ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age is not a number"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -5\n", "max_age is not a number"),
        (
            f"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {MAX_AGE_LIMIT + 1}\n",
            f"max_age is above {MAX_AGE_LIMIT}",
        ),
        ("version: STSv1\nmode: enforce\nmax_age: 60\n", "names no mx"),
        ("version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 60\n", "mx pattern"),
        ("version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 60\n", "mx pattern"),
        ("version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 60\njunk line\n", "no ':'"),
        ("<html><body>hello</body></html>", "no ':'"),
    ],
)
def test_malformed_policy_says_why(text: str, reason: str) -> None:
    parsed = parse_policy(text)
    assert isinstance(parsed, Malformed)
    assert reason in parsed.reason


def test_max_age_at_the_limit_is_allowed() -> None:
    text = f"version: STSv1\nmode: testing\nmx: a.example\nmax_age: {MAX_AGE_LIMIT}\n"
    assert parse_policy(text) == Policy(Mode.TESTING, MAX_AGE_LIMIT, ("a.example",))


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("mx1.example.com", True),
        ("MX1.Example.Com.", True),
        ("a.mail.example.com", True),
        ("mail.example.com", False),  # the wildcard needs one label
        ("a.b.mail.example.com", False),  # and matches one label only
        ("mx2.example.com", False),
        ("xmx1.example.com", False),
        (".mail.example.com", False),
    ],
)
def test_mx_matching(host: str, allowed: bool) -> None:
    policy = parse_policy(GOOD)
    assert isinstance(policy, Policy)
    assert policy.allows(host) is allowed


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (("v=STSv1; id=20160831085700Z;",), "20160831085700Z"),
        (("v=STSv1;id=abc123",), "abc123"),
        (("v=spf1 -all", "v=STSv1; id=x1; ext=y"), "x1"),
        ((), None),
        (("v=spf1 -all",), None),
        (("v=STSv10; id=1",), None),
    ],
)
def test_record_id(texts: tuple[str, ...], expected: str | None) -> None:
    assert parse_record(texts) == expected


@pytest.mark.parametrize(
    ("texts", "reason"),
    [
        (("v=STSv1; id=1", "v=STSv1; id=2"), "not one"),
        (("v=STSv1;",), "no id"),
        (("v=STSv1; id=has-dash",), "letters and digits"),
        (("v=STSv1; id=" + "a" * 33,), "letters and digits"),
        (("v=STSv1; broken",), "without '='"),
    ],
)
def test_malformed_record_says_why(texts: tuple[str, ...], reason: str) -> None:
    parsed = parse_record(texts)
    assert isinstance(parsed, Malformed)
    assert reason in parsed.reason
