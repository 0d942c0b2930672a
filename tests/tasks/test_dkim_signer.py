"""The DKIM signer (tasks/dkim): relaxed canonicalisation by RFC 6376's own example, and signed
messages checked by an independent verifier, dkimpy, which reads the public keys from DNS
records served by dnsmasq (tests/tasks/dkim_support.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from tasks.dkim.canonical import relaxed_body, relaxed_header, split_message
from tasks.dkim.signer import Signer, from_domain
from tasks.message import build_message
from tasks.notification import Notification
from tests.support.dns_server import DnsServer
from tests.tasks.dkim_support import DOMAIN, KeySet, dkim_dns, dkim_keys, verify

__all__ = ["dkim_dns", "dkim_keys"]  # fixtures

NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


def build(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "sender": f"Shop <shop@{DOMAIN}>",
        "to": ["Alice <alice@example.org>", "bob@example.net"],
        "cc": ["carol@example.org"],
        "subject": "Your order has shipped",
        "text": "Hello Alice,\nyour order is on its way.\n",
    }
    fields.update(overrides)
    message = build_message(
        Notification.validate_dict(fields),
        message_id="m-0123abcd",
        helo_domain=DOMAIN,
        max_bytes=10_000_000,
        now=NOW,
    )
    return message.data


def signatures(data: bytes) -> list[bytes]:
    fields, _ = split_message(data)
    return [field.raw for field in fields if field.key == "dkim-signature"]


def tags(signature: bytes) -> dict[str, str]:
    value = signature.partition(b":")[2].decode("ascii")
    pairs = (tag.partition("=") for tag in value.split(";"))
    return {name.strip(): "".join(text.split()) for name, _, text in pairs}


# RFC 6376 §3.4.5, the example of relaxed canonicalisation.
_EXAMPLE_HEAD = b"A: X\r\nB : Y\t\r\n\tZ  \r\n"
_EXAMPLE_BODY = b" C \r\nD \t E\r\n\r\n\r\n"


def test_relaxed_canonicalisation_matches_the_rfc_example() -> None:
    fields, body = split_message(_EXAMPLE_HEAD + b"\r\n" + _EXAMPLE_BODY)
    assert [field.name for field in fields] == ["A", "B"]
    assert b"".join(relaxed_header(field.raw) for field in fields) == b"a:X\r\nb:Y Z\r\n"
    assert relaxed_body(body) == b" C\r\nD E\r\n"


@pytest.mark.parametrize(
    ("field", "canonical"),
    [
        (b"Subject: one line", b"subject:one line\r\n"),
        (b"Subject:  two  spaces ", b"subject:two spaces\r\n"),
        (b"Subject:\ttab\tinside", b"subject:tab inside\r\n"),
        (b"Subject: folded \r\n\there", b"subject:folded here\r\n"),
        (b"To: a@b.c,\r\n d@e.f", b"to:a@b.c, d@e.f\r\n"),
    ],
)
def test_relaxed_header_fields(field: bytes, canonical: bytes) -> None:
    assert relaxed_header(field) == canonical


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        (b"", b""),  # RFC 6376 §3.4.4: an empty body stays empty
        (b"\r\n\r\n", b""),
        (b"no final newline", b"no final newline\r\n"),
        (b"trailing  \t", b"trailing\r\n"),
        (b"a\r\n \r\n\t\r\n", b"a\r\n"),
        (b"one space \r\nx", b"one space\r\nx\r\n"),
        (b"a  b\tc \t\r\n", b"a b c\r\n"),
    ],
)
def test_relaxed_body_edges(body: bytes, canonical: bytes) -> None:
    assert relaxed_body(body) == canonical


def test_both_algorithms_sign_and_verify_through_dns(
    dkim_keys: KeySet, dkim_dns: DnsServer
) -> None:
    signed = Signer(dkim_keys.loaded).sign(build(html="<p>Hello</p>"))
    found = signatures(signed)
    assert [tags(s)["a"] for s in found] == ["rsa-sha256", "ed25519-sha256"]
    assert [tags(s)["s"] for s in found] == ["rsa", "ed"]
    first = tags(found[0])
    assert first["d"] == DOMAIN
    assert first["c"] == "relaxed/relaxed"
    assert first["v"] == "1"
    # From once more than present (oversigned); Bcc never, MIME fields yes.
    assert first["h"].split(":") == [
        "from", "from", "to", "cc", "subject", "date", "message-id",
        "mime-version", "content-type",
    ]  # fmt: skip
    assert all(len(line) <= 78 for s in found for line in s.split(b"\r\n"))
    assert verify(signed, dkim_dns, 0)
    assert verify(signed, dkim_dns, 1)


def test_non_ascii_headers_encoded_and_smtputf8(dkim_keys: KeySet, dkim_dns: DnsServer) -> None:
    signer = Signer(dkim_keys.only("rsa", "ed"))
    encoded = signer.sign(build(subject="Ihre Bestellung für Zoë", to=["Zoë <zoe@example.org>"]))
    assert b"=?utf-8?b?" in encoded
    utf8 = signer.sign(
        build(sender=f"Zoë <zoë@{DOMAIN}>", to=["jürgen@example.org"], subject="Grüße")
    )
    assert "zoë@".encode() in utf8  # an SMTPUTF8 header block, UTF-8 as is
    for data in (encoded, utf8):
        assert verify(data, dkim_dns, 0)
        assert verify(data, dkim_dns, 1)


def test_long_folded_headers(dkim_keys: KeySet, dkim_dns: DnsServer) -> None:
    many = [f"reader{n}@example.org" for n in range(40)]
    data = build(subject=" ".join(["word"] * 120), to=many, headers={"X-Long": "x " * 300})
    assert data.count(b"\r\n ") > 10  # folded by the builder
    signed = Signer(dkim_keys.only("rsa")).sign(data)
    assert verify(signed, dkim_dns)


@pytest.mark.parametrize(
    "body", [b"no final newline", b"", b"\r\n\r\n\r\n", b"  spaces  \t\r\n\r\n"]
)
def test_bodies_without_final_newline_or_empty(
    body: bytes, dkim_keys: KeySet, dkim_dns: DnsServer
) -> None:
    data = f"From: a@{DOMAIN}\r\nTo: b@example.org\r\nSubject: edge\r\n\r\n".encode() + body
    signed = Signer(dkim_keys.loaded).sign(data)
    assert signed.endswith(data)
    assert verify(signed, dkim_dns, 0)
    assert verify(signed, dkim_dns, 1)


def test_bare_line_feeds_are_signed_as_line_breaks(dkim_keys: KeySet, dkim_dns: DnsServer) -> None:
    data = f"From: a@{DOMAIN}\nTo: b@example.org\nSubject: lf\n\nline one\nline two\n".encode()
    signed = Signer(dkim_keys.only("rsa")).sign(data)
    assert signed.endswith(data)  # the message itself is left as it is
    assert verify(signed, dkim_dns)
    assert verify(signed.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"), dkim_dns)


def test_tampering_fails_verification(dkim_keys: KeySet, dkim_dns: DnsServer) -> None:
    signed = Signer(dkim_keys.only("rsa", "ed")).sign(build())
    assert verify(signed, dkim_dns, 0)
    body = signed.replace(b"on its way", b"on its w4y")
    sender = signed.replace(f"<shop@{DOMAIN}>".encode(), f"<sh0p@{DOMAIN}>".encode())
    for tampered in (body, sender):
        assert not verify(tampered, dkim_dns, 0)
        assert not verify(tampered, dkim_dns, 1)


def test_a_second_from_added_after_signing_fails(dkim_keys: KeySet, dkim_dns: DnsServer) -> None:
    signed = Signer(dkim_keys.only("rsa")).sign(build())
    head, _, body = signed.partition(b"\r\n\r\n")
    for added in (
        head + f"\r\nFrom: Bank <alerts@{DOMAIN}>".encode() + b"\r\n\r\n" + body,
        b"From: evil@example.net\r\n" + signed,
    ):
        assert not verify(added, dkim_dns)


def test_only_keys_of_the_from_domain_sign(dkim_keys: KeySet, dkim_dns: DnsServer) -> None:
    signer = Signer(dkim_keys.loaded)
    unsigned = build(sender="shop@example.com")
    assert signer.sign(unsigned) is unsigned
    # A subdomain is signed by the parent's key configured with subdomains, d= the parent.
    sub = signer.sign(build(sender="news@eu.parent.test"))
    [signature] = signatures(sub)
    assert tags(signature)["d"] == "parent.test"
    assert tags(signature)["s"] == "s1"
    assert verify(sub, dkim_dns)
    # DOMAIN's keys have no subdomains: mail from under it stays unsigned.
    assert signatures(signer.sign(build(sender=f"x@eu.{DOMAIN}"))) == []


def test_signing_twice_adds_nothing_and_no_from_is_not_signed(dkim_keys: KeySet) -> None:
    signer = Signer(dkim_keys.loaded)
    signed = signer.sign(build())
    assert signer.sign(signed) is signed
    two_froms = b"From: a@" + DOMAIN.encode() + b"\r\n" + build()
    assert signer.sign(two_froms) is two_froms


@pytest.mark.parametrize(
    ("field", "domain"),
    [
        (b"From: Shop <shop@Example.COM>", "example.com"),
        (b'From: "a, b" <x@example.com>, y@example.com', "example.com"),
        (b"From: x@example.com, y@example.org", None),
        ("From: zoë@bücher.test".encode(), "xn--bcher-kva.test"),
        (b"From: =?utf-8?b?w6k=?=\r\n <x@example.com>", "example.com"),
        (b"From: undisclosed-recipients:;", None),
        (b'From: "x@evil.test" <a@example.com>', "example.com"),
        (b"From: a@example.com (Ann at example.net)", "example.com"),
        (b"From: a, b@example.com", None),  # two mailboxes, one of them without a domain
    ],
)
def test_from_domain(field: bytes, domain: str | None) -> None:
    fields, _ = split_message(field + b"\r\n\r\nbody\r\n")
    assert from_domain(fields) == domain


def test_signature_fields_fold_within_78_columns(dkim_keys: KeySet) -> None:
    signed = Signer(dkim_keys.loaded).sign(build(), now=1_800_000_000)
    for signature in signatures(signed):
        lines = signature.split(b"\r\n")
        assert len(lines) > 1
        assert all(len(line) <= 78 for line in lines)
        assert re.fullmatch(rb"DKIM-Signature: v=1; .*", lines[0])
        assert tags(signature)["t"] == "1800000000"
