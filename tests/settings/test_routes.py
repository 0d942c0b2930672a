"""MAILROOM_ROUTES: parsing (one-line errors) and the look-up order of settings/routes.py."""

from __future__ import annotations

import pytest

from settings import FixedTls, HopKind, Route, SettingsError, load_settings, route_for
from settings.routes import fixed_server, parse_routes
from tasks.routing import destination_of

CATCHER = Route(HopKind.FIXED, "127.0.0.1", 1025, FixedTls.NONE)
INTERNAL = Route(HopKind.FIXED, "mail.internal.test", 25, FixedTls.STARTTLS)


def test_values_parse_into_routes() -> None:
    routes = parse_routes(
        '{"*": "smtp://127.0.0.1:1025?tls=none", "Corp.Example": "smtp://Mail.Internal.test",'
        ' ".example.com": "mx", "partner.test": "RELAY", "bücher.test": "smtp://[::1]:2525?tls=tls"}'
    )

    assert routes == {
        "*": CATCHER,
        "corp.example": INTERNAL,
        ".example.com": Route(HopKind.MX),
        "partner.test": Route(HopKind.RELAY),
        "xn--bcher-kva.test": Route(HopKind.FIXED, "::1", 2525, FixedTls.TLS),
    }
    assert str(routes["*"]) == "smtp://127.0.0.1:1025?tls=none"
    assert routes["xn--bcher-kva.test"].server == "smtp://[::1]:2525"


ROUTES = {
    "a.example": CATCHER,
    ".example": INTERNAL,
    ".deep.example": Route(HopKind.MX),
    "*": Route(HopKind.RELAY),
}


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("a.example", CATCHER),  # exact beats every suffix
        ("b.example", INTERNAL),  # .example covers subdomains
        ("x.a.example", INTERNAL),  # an exact key does not cover subdomains
        ("x.deep.example", Route(HopKind.MX)),  # the longest suffix wins
        ("deep.example", INTERNAL),  # .deep.example is not deep.example itself
        ("example", Route(HopKind.RELAY)),  # nor is .example example itself: *
        ("other.test", Route(HopKind.RELAY)),
    ],
)
def test_lookup_is_exact_then_longest_suffix_then_wildcard(domain: str, expected: Route) -> None:
    assert route_for(ROUTES, domain) == expected


def test_lookup_without_a_match_leaves_it_to_the_delivery_mode() -> None:
    assert route_for({"a.example": CATCHER}, "b.example") is None
    assert destination_of("x@b.example", "mx", {"a.example": CATCHER}) == "b.example"
    assert destination_of("x@b.example", "relay", {"a.example": CATCHER}) == "relay"


def test_destination_is_the_routes_next_hop() -> None:
    assert destination_of("x@A.Example", "mx", ROUTES) == "smtp://127.0.0.1:1025"
    assert destination_of("x@b.example", "mx", ROUTES) == "smtp://mail.internal.test:25"
    assert destination_of("x@x.deep.example", "relay", ROUTES) == "x.deep.example"
    assert destination_of("x@other.test", "mx", ROUTES) == "relay"


def test_a_fixed_destination_names_its_server() -> None:
    assert fixed_server("smtp://127.0.0.1:1025") == Route(HopKind.FIXED, "127.0.0.1", 1025)
    assert fixed_server("example.com") is None
    assert fixed_server("relay") is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{", ["must be a JSON object"]),
        ('["mx"]', ["must be a JSON object"]),
        ('{"a.test": "ftp://host"}', ["'a.test'", "mx, relay or smtp://host:port"]),
        ('{"a.test": 25}', ["'a.test'", "mx, relay or smtp://host:port"]),
        ('{"a.test": "smtp://host:99999"}', ["port must be a number"]),
        ('{"a.test": "smtp://host:x"}', ["port must be a number"]),
        ('{"a.test": "smtp://host:0"}', ["port must be a number"]),
        ('{"a.test": "smtp://192.0.2.1:25"}', ["only accepted on loopback"]),
        ('{"a.test": "smtp://host?tls=maybe"}', ["tls must be none, starttls or tls"]),
        ('{"a.test": "smtp://host?tls=none&x=1"}', ["the only option is ?tls="]),
        ('{"a.test": "smtp://host/path"}', ["nothing after the port"]),
        ('{"a.test": "smtp://10.1:25"}', ["a DNS name or a loopback address"]),
        ('{"*.test": "mx"}', ["each key must be a domain, .domain or *"]),
        ('{"": "mx"}', ["each key must be a domain, .domain or *"]),
        ('{"a.test": "mx", "A.test": "mx"}', ["'a.test' is given twice"]),
        (
            '{"a.test": "smtp://h.test?tls=none", "b.test": "smtp://h.test:25"}',
            ["smtp://h.test:25 is given both tls=none and tls=starttls"],
        ),
    ],
)
def test_bad_routes_are_one_line_naming_the_variable(value: str, words: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(routes=value)

    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith("MAILROOM_ROUTES: ")
    for word in words:
        assert word in line


def test_credentials_in_a_route_are_refused_and_never_shown() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(routes='{"a.test": "smtp://svc:pa55w0rd@host:x"}')

    assert "pa55w0rd" not in str(caught.value)
    assert "no credentials" in str(caught.value)


def test_a_route_to_the_relay_needs_a_relay_host() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(routes='{"partner.test": "relay"}')

    assert str(caught.value) == (
        "MAILROOM_RELAY_HOST: required when MAILROOM_ROUTES sends 'partner.test' to relay"
    )
