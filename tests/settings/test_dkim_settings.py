"""MAILROOM_DKIM_KEYS parsing: the keys' entries, and one clear line for each kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from settings import Settings
from settings.dkim import DkimKey, parse_dkim_keys


def test_entries_are_parsed_lower_cased_and_idna_encoded() -> None:
    keys = parse_dkim_keys(
        '[{"domain": "Example.COM.", "selector": "S2026", "key_file": "/k/rsa.pem"},'
        ' {"domain": "bücher.example", "selector": "ed", "key_file": "/k/ed.pem",'
        ' "subdomains": true}]'
    )
    assert keys == (
        DkimKey("example.com", "s2026", Path("/k/rsa.pem")),
        DkimKey("xn--bcher-kva.example", "ed", Path("/k/ed.pem"), subdomains=True),
    )
    assert keys[0].record_name == "s2026._domainkey.example.com"


def test_a_key_signs_its_domain_and_only_with_subdomains_its_children() -> None:
    plain = DkimKey("example.com", "s1", Path("k"))
    wide = DkimKey("example.com", "s1", Path("k"), subdomains=True)
    assert plain.signs_for("example.com")
    assert wide.signs_for("example.com")
    assert not plain.signs_for("mail.example.com")
    assert wide.signs_for("mail.example.com")
    assert not wide.signs_for("badexample.com")


def test_empty_is_no_keys() -> None:
    assert parse_dkim_keys("") == ()
    assert Settings().dkim_keys == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "must be a JSON list"),
        ('{"domain": "x"}', "must be a JSON list of objects"),
        ('["x"]', "entry 1 must be an object"),
        ('[{"domain": "example.com", "selector": "s"}]', "entry 1 needs key_file"),
        ('[{"domain": "example.com", "selector": "s", "key_file": "k", "alg": "rsa"}]', "unknown"),
        ('[{"domain": "exa mple.com", "selector": "s", "key_file": "k"}]', "not a valid DNS"),
        ('[{"domain": "com", "selector": "s", "key_file": "k"}]', "not a valid DNS name"),
        ('[{"domain": "example.com", "selector": "s_1", "key_file": "k"}]', "DNS labels"),
        (
            '[{"domain": "example.com", "selector": "s", "key_file": "k", "subdomains": "yes"}]',
            "subdomains must be true or false",
        ),
        (
            '[{"domain": "example.com", "selector": "s", "key_file": "a"},'
            ' {"domain": "EXAMPLE.com", "selector": "S", "key_file": "b"}]',
            "given twice",
        ),
    ],
)
def test_mistakes_are_one_line_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_dkim_keys(text)
    assert "\n" not in str(caught.value)


def test_settings_name_the_variable() -> None:
    with pytest.raises(ValidationError, match="dkim_keys"):
        Settings(dkim_keys='[{"domain": "example.com"}]')
