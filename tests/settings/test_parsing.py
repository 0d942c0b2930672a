"""Table-driven tests for the pure parsers of settings/parsing.py."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settings.parsing import (
    Listen,
    Nameserver,
    Rate,
    parse_listen,
    parse_max_connections,
    parse_nameservers,
    parse_networks,
    parse_rate,
    parse_rate_limits,
    parse_relay_host,
    parse_retry_delays,
)


def _single_line_error(excinfo: pytest.ExceptionInfo[ValueError]) -> str:
    message = str(excinfo.value)
    assert message
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1/s", Rate(1, 1)),
        ("30/m", Rate(30, 60)),
        ("500/h", Rate(500, 3600)),
        (" 7/M ", Rate(7, 60)),
        ("007/s", Rate(7, 1)),
    ],
)
def test_parse_rate_accepts(text: str, expected: Rate) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text", ["", "0/s", "-1/m", "30/d", "30", "/m", "30/", "1.5/s", "30 / m", "30/min", "٣/s"]
)
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r'"N/s", "N/m" or "N/h"') as excinfo:
        parse_rate(text)
    assert repr(text) in _single_line_error(excinfo)


@given(count=st.integers(min_value=1, max_value=10**9), unit=st.sampled_from(["s", "m", "h"]))
def test_parse_rate_round_trips(count: int, unit: str) -> None:
    rate = parse_rate(f"{count}/{unit}")
    assert rate.count == count
    assert rate.per_seconds == {"s": 1, "m": 60, "h": 3600}[unit]
    assert str(rate) == f"{count}/{unit}"
    assert parse_rate(str(rate)) == rate


def test_rate_interval_spaces_deliveries_evenly() -> None:
    assert Rate(30, 60).interval == 2.0
    assert Rate(4, 1).interval == 0.25


@pytest.mark.parametrize(("count", "per_seconds"), [(0, 60), (1, 0), (-3, 1)])
def test_rate_refuses_impossible_values(count: int, per_seconds: int) -> None:
    with pytest.raises(ValueError, match="count >= 1"):
        Rate(count, per_seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", {}),
        ('{"gmail.com": "30/m"}', {"gmail.com": Rate(30, 60)}),
        ('{"Example.ORG": "1/s", "relay": "2/h", "*": "100/m"}',
         {"example.org": Rate(1, 1), "relay": Rate(2, 3600), "*": Rate(100, 60)}),
    ],
)  # fmt: skip
def test_parse_rate_limits_accepts(text: str, expected: dict[str, Rate]) -> None:
    assert parse_rate_limits(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "must be a JSON object"),
        ("30/m", "must be a JSON object"),
        ('["30/m"]', "must be a JSON object"),
        ('"30/m"', "must be a JSON object"),
        ('{"gmail.com": 30}', "'gmail.com'"),
        ('{"gmail.com": "30/d"}', "'30/d'"),
        ('{"gmail.com": "0/m"}', "N >= 1"),
        ('{"": "1/s"}', "destination must be a non-empty string"),
        ('{"a": "1/s",}', "must be a JSON object"),
    ],
)
def test_parse_rate_limits_refuses(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as excinfo:
        parse_rate_limits(text)
    _single_line_error(excinfo)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60", (60,)),
        ("60,300,900", (60, 300, 900)),
        (" 1 , 2 ,3 ", (1, 2, 3)),
    ],
)
def test_parse_retry_delays_accepts(text: str, expected: tuple[int, ...]) -> None:
    assert parse_retry_delays(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "at least one"),
        ("  ", "at least one"),
        ("0", "'0'"),
        ("60,-1", "'-1'"),
        ("60,,300", "''"),
        ("60,", "''"),
        ("1.5", "'1.5'"),
        ("1m", "'1m'"),
    ],
)
def test_parse_retry_delays_refuses(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as excinfo:
        parse_retry_delays(text)
    _single_line_error(excinfo)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("  ", ()),
        ("127.0.0.1", (Nameserver("127.0.0.1", 53),)),
        ("127.0.0.1:5353", (Nameserver("127.0.0.1", 5353),)),
        ("[::1]:5353", (Nameserver("::1", 5353),)),
        ("::1", (Nameserver("::1", 53),)),
        ("[::1]", (Nameserver("::1", 53),)),
        ("0:0:0:0:0:0:0:1", (Nameserver("::1", 53),)),
        ("127.0.0.1:5353, ::1", (Nameserver("127.0.0.1", 5353), Nameserver("::1", 53))),
    ],
)
def test_parse_nameservers_accepts(text: str, expected: tuple[Nameserver, ...]) -> None:
    assert parse_nameservers(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("dns.google", "must be an IP address"),
        ("127.0.0.1:0", "port must be 1..65535"),
        ("127.0.0.1:65536", "port must be 1..65535"),
        ("127.0.0.1:dns", "port must be a number"),
        ("[::1]:", "port must be a number"),
        ("[127.0.0.1]:53", "[ipv6]:port"),
        ("127.0.0.1,", "must be an IP address"),
        ("300.1.1.1", "must be an IP address"),
    ],
)
def test_parse_nameservers_refuses(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as excinfo:
        parse_nameservers(text)
    _single_line_error(excinfo)


@pytest.mark.parametrize(
    ("text", "expected", "loopback"),
    [
        ("127.0.0.1:5555", Listen("127.0.0.1", 5555), True),
        ("127.1.2.3:80", Listen("127.1.2.3", 80), True),
        ("[::1]:5555", Listen("::1", 5555), True),
        ("localhost:9808", Listen("localhost", 9808), True),
        ("0.0.0.0:5555", Listen("0.0.0.0", 5555), False),
        ("[::]:5555", Listen("::", 5555), False),
        ("flower.internal:5555", Listen("flower.internal", 5555), False),
    ],
)
def test_parse_listen_accepts(text: str, expected: Listen, loopback: bool) -> None:
    listen = parse_listen(text)
    assert listen == expected
    assert listen.is_loopback is loopback
    assert str(listen) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("127.0.0.1", "host:port"),
        ("5555", "host:port"),
        (":5555", "host:port"),
        ("::1:5555", "needs brackets"),
        ("127.0.0.1:0", "port must be 1..65535"),
        ("127.0.0.1:99999", "port must be 1..65535"),
        ("127.0.0.1:http", "port must be a number"),
        ("bad host:5555", "host:port"),
    ],
)
def test_parse_listen_refuses(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as excinfo:
        parse_listen(text)
    _single_line_error(excinfo)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"*": 20}', {"*": 20}),
        ('{"*": 20, "Outlook.com": 3, "relay": 1}', {"*": 20, "outlook.com": 3, "relay": 1}),
        ("{}", {}),
    ],
)
def test_parse_max_connections_accepts(text: str, expected: dict[str, int]) -> None:
    assert parse_max_connections(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"*": 0}', "'*': must be an integer >= 1 (got 0)"),
        ('{"*": -2}', "(got -2)"),
        ('{"*": "20"}', "(got '20')"),
        ('{"*": 2.5}', "(got 2.5)"),
        ('{"*": true}', "(got True)"),
        ("[20]", "must be a JSON object"),
        ("20", "must be a JSON object"),
        ("{*: 20}", "must be a JSON object"),
    ],
)
def test_parse_max_connections_refuses(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as excinfo:
        parse_max_connections(text)
    _single_line_error(excinfo)


@pytest.mark.parametrize(
    "text", ["smtp.example.com", "smtp.office365.com", "relay", "mx-1.example.org.", "a1.b2.c3"]
)
def test_parse_relay_host_accepts(text: str) -> None:
    assert parse_relay_host(text) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("192.0.2.10", "not an IP address"),
        ("2001:db8::25", "not an IP address"),
        ("[2001:db8::25]", "not an IP address"),
        ("::1", "not an IP address"),
        ("10.1", "not an IP address"),
        ("smtp.example.com:587", "without a port"),
        ("", "valid DNS name"),
        ("smtp..example.com", "valid DNS name"),
        ("-smtp.example.com", "valid DNS name"),
        ("smtp_relay.example.com", "valid DNS name"),
        ("smtp example.com", "valid DNS name"),
        ("a" * 64 + ".example.com", "valid DNS name"),
        ("smtp.exämple.com", "valid DNS name"),
    ],
)
def test_parse_relay_host_refuses(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as excinfo:
        parse_relay_host(text)
    _single_line_error(excinfo)


def test_parse_networks() -> None:
    assert parse_networks(" 10.0.0.0/8, fd00::/8,127.0.0.2 ,") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("127.0.0.2/32"),
    )
    assert parse_networks("") == ()


@pytest.mark.parametrize("text", ["10.0.0.1/8", "10.0.0.0/33", "example.org", "10.0.0.0/8;"])
def test_parse_networks_refuses_what_is_no_network(text: str) -> None:
    with pytest.raises(ValueError, match="CIDR"):
        parse_networks(text)
