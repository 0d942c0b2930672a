"""The pure parts of `mailroom check --sender-domain`: the record parsers (tag lists, DKIM,
DMARC, MTA-STS, TLS-RPT, SPF terms) and SPF evaluation over a fixed table of DNS answers."""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field

import pytest

from tasks.sender_domain.dns_reader import Answer, Found, Missing, Unreadable
from tasks.sender_domain.records import (
    DkimRecord,
    DmarcRecord,
    Malformed,
    is_dmarc,
    parse_dkim_record,
    parse_dmarc_record,
    parse_sts_record,
    parse_tags,
    parse_tlsrpt_record,
)
from tasks.sender_domain.spf import Provider, Sender, Verdict, evaluate
from tasks.sender_domain.spf_terms import Qualifier, is_spf, parse_spf

_KEY = base64.b64encode(b"\x01\x02public-key-bytes").decode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=DKIM1; k=rsa; p=AB", {"v": "DKIM1", "k": "rsa", "p": "AB"}),
        (" v = DKIM1 ;k=rsa;", {"v": "DKIM1", "k": "rsa"}),
        ("a=1;;", Malformed("a part is not tag=value")),
        ("a=1; a=2", Malformed("tag a= is given twice")),
        ("1a=x", Malformed("a part is not tag=value")),
        ("", {}),
    ],
)
def test_tag_lists(text: str, expected: object) -> None:
    assert parse_tags(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"v=DKIM1; k=rsa; p={_KEY}",
            DkimRecord("DKIM1", "rsa", b"\x01\x02public-key-bytes", False),
        ),
        # Whitespace inside p= (folded, or where TXT strings were joined) does not count.
        (
            f"p={_KEY[:6]} \t {_KEY[6:]}",
            DkimRecord(None, "rsa", b"\x01\x02public-key-bytes", False),
        ),
        ("v=DKIM1; k=ED25519; t=s:y; p=", DkimRecord("DKIM1", "ed25519", b"", True)),
        ("k=rsa; v=DKIM1; p=AA==", Malformed("v= must be the first tag and read DKIM1")),
        ("v=DKIM2; p=AA==", Malformed("v= must be the first tag and read DKIM1")),
        ("v=DKIM1; k=rsa", Malformed("it has no p= (public key) tag")),
        ("v=DKIM1; p=not*base64", Malformed("p= is not valid base64")),
    ],
)
def test_dkim_records(text: str, expected: object) -> None:
    assert parse_dkim_record(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=DMARC1; p=reject", DmarcRecord("reject", None, "r", "r", 100, ())),
        (
            "v=DMARC1;p=Quarantine;sp=none;adkim=s;aspf=S;pct=20;"
            "rua=mailto:a@x.test, mailto:b@x.test",
            DmarcRecord("quarantine", "none", "s", "s", 20, ("mailto:a@x.test", "mailto:b@x.test")),
        ),
        ("v=DMARC1", Malformed("p= must be none, quarantine or reject")),
        ("v=DMARC1; p=block", Malformed("p= must be none, quarantine or reject")),
        ("v=DMARC1; p=none; sp=all", Malformed("sp= must be none, quarantine or reject")),
        ("v=DMARC1; p=none; adkim=x", Malformed("adkim= must be r or s")),
        ("v=DMARC1; p=none; pct=101", Malformed("pct= must be a whole number from 0 to 100")),
    ],
)
def test_dmarc_records(text: str, expected: object) -> None:
    assert parse_dmarc_record(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=DMARC1; p=none", True),
        ("v = DMARC1", True),
        ("v=DMARC10; p=none", False),
        ("p=none; v=DMARC1", False),
    ],
)
def test_what_counts_as_a_dmarc_record(text: str, expected: bool) -> None:
    assert is_dmarc(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=STSv1; id=20260101T000000", "20260101T000000"),
        ("v=STSv1;", Malformed("it has no id= tag")),
        ("v=STSv1; id=2026-01-01", Malformed("id= must be 1 to 32 letters and digits")),
        ("v=STSv1; id=" + "a" * 33, Malformed("id= must be 1 to 32 letters and digits")),
    ],
)
def test_mta_sts_records(text: str, expected: object) -> None:
    assert parse_sts_record(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=TLSRPTv1; rua=mailto:tls@x.test", ("mailto:tls@x.test",)),
        (
            "v=TLSRPTv1;rua=mailto:a@x.test,https://r.x.test/v1",
            ("mailto:a@x.test", "https://r.x.test/v1"),
        ),
        ("v=TLSRPTv1", Malformed("it has no rua= (where reports go)")),
        (
            "v=TLSRPTv1; rua=http://r.x.test",
            Malformed("every rua= address must be a mailto: or https:// URI"),
        ),
    ],
)
def test_tls_rpt_records(text: str, expected: object) -> None:
    assert parse_tlsrpt_record(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("v=spf1 -all", True), ("V=SPF1", True), ("v=spf10 -all", False), ("spf1 v=spf1", False)],
)
def test_what_counts_as_an_spf_record(text: str, expected: bool) -> None:
    assert is_spf(text) is expected


def test_spf_terms_parse_with_their_qualifiers_and_prefixes() -> None:
    parsed = parse_spf(
        "v=spf1 a mx:mx.x.test/24//64 ~ip4:192.0.2.1/28 ip6:2001:db8::/32 ?include:i.test "
        "exp=e.test redirect=r.test foo=bar -all"
    )
    assert not isinstance(parsed, Malformed)
    assert [(m.qualifier, m.kind, m.domain) for m in parsed.mechanisms] == [
        (Qualifier.PASS, "a", None),
        (Qualifier.PASS, "mx", "mx.x.test"),
        (Qualifier.SOFTFAIL, "ip4", None),
        (Qualifier.PASS, "ip6", None),
        (Qualifier.NEUTRAL, "include", "i.test"),
        (Qualifier.FAIL, "all", None),
    ]
    assert (parsed.mechanisms[1].cidr4, parsed.mechanisms[1].cidr6) == (24, 64)
    assert parsed.mechanisms[2].network == ipaddress.ip_network("192.0.2.0/28")
    assert parsed.mechanisms[3].network == ipaddress.ip_network("2001:db8::/32")
    assert parsed.redirect == "r.test"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("v=spf1 bogus", "unknown term 'bogus'"),
        ("v=spf1 ip4:300.1.1.1", "'ip4:300.1.1.1' is not a valid ip4 network"),
        ("v=spf1 ip4:2001:db8::1", "'ip4:2001:db8::1' is not a valid ip4 network"),
        ("v=spf1 ip6", "ip6 needs an address: 'ip6'"),
        ("v=spf1 include", "'include': include needs a domain"),
        ("v=spf1 all:x.test", "'all:x.test': all takes no argument"),
        ("v=spf1 a/33", "'a/33': prefix length out of range"),
        ("v=spf1 redirect=a.test redirect=b.test", "redirect= is given twice"),
    ],
)
def test_malformed_spf_terms(text: str, reason: str) -> None:
    assert parse_spf(text) == Malformed(reason)


@dataclass
class _Table:
    """DNS answers from a table (the pure evaluator's input); every look-up is recorded."""

    txt_records: dict[str, tuple[str, ...]] = field(default_factory=dict)
    address_records: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mx_records: dict[str, tuple[str, ...]] = field(default_factory=dict)
    broken: frozenset[str] = frozenset()
    asked: list[str] = field(default_factory=list)

    def _answer(self, table: dict[str, tuple[str, ...]], name: str) -> Answer:
        self.asked.append(name)
        if name in self.broken:
            return Unreadable("no nameserver answered in time")
        return Found(table[name]) if name in table else Missing()

    def txt(self, name: str) -> Answer:
        return self._answer(self.txt_records, name)

    def addresses(self, name: str) -> Answer:
        return self._answer(self.address_records, name)

    def mx(self, name: str) -> Answer:
        return self._answer(self.mx_records, name)


_ME = ipaddress.ip_address("192.0.2.10")
_TABLE = _Table(
    txt_records={
        "inc.test": ("v=spf1 ip4:192.0.2.0/24 -all",),
        "other.test": ("v=spf1 ip4:198.51.100.1 -all",),
        "none.test": ("hello",),
        "macro.test": ("v=spf1 exists:%{i}.x.test -all",),
        "loop.test": ("v=spf1 include:loop.test -all",),
    },
    address_records={"host.test": ("192.0.2.10",), "mx1.test": ("192.0.2.99",)},
    mx_records={"d.test": ("mx1.test",)},
    broken=frozenset({"broken.test"}),
)


@pytest.mark.parametrize(
    ("record", "sender", "verdict", "reason"),
    [
        ("v=spf1 ip4:192.0.2.10 -all", _ME, Verdict.PASS, "'ip4:192.0.2.10' at d.test"),
        ("v=spf1 ip6:2001:db8::/32 -all", _ME, Verdict.FAIL, "'-all' at d.test"),
        (
            "v=spf1 ip4:192.0.2.0/24",
            ipaddress.ip_address("::ffff:192.0.2.7"),
            Verdict.PASS,
            "'ip4:192.0.2.0/24' at d.test",
        ),
        ("v=spf1 a:host.test ~all", _ME, Verdict.PASS, "'a:host.test' at d.test"),
        ("v=spf1 mx ~all", _ME, Verdict.SOFTFAIL, "'~all' at d.test"),
        ("v=spf1 mx/24 -all", _ME, Verdict.PASS, "'mx/24' at d.test"),
        (
            "v=spf1 include:other.test include:inc.test -all",
            _ME,
            Verdict.PASS,
            "'include:inc.test' at d.test",
        ),
        ("v=spf1 redirect=inc.test", _ME, Verdict.PASS, "'ip4:192.0.2.0/24' at inc.test"),
        ("v=spf1 ?all", _ME, Verdict.NEUTRAL, "'?all' at d.test"),
        ("v=spf1 ip4:198.51.100.1", _ME, Verdict.NEUTRAL, "no term of d.test's record matches"),
        (
            "v=spf1 include:none.test -all",
            _ME,
            Verdict.PERMERROR,
            "'include:none.test': none.test has no SPF record",
        ),
        (
            "v=spf1 redirect=none.test",
            _ME,
            Verdict.PERMERROR,
            "redirect=none.test: none.test has no SPF record",
        ),
        (
            "v=spf1 include:loop.test -all",
            _ME,
            Verdict.PERMERROR,
            "'include:loop.test': 'include:loop.test' includes itself",
        ),
        (
            "v=spf1 include:broken.test -all",
            _ME,
            Verdict.TEMPERROR,
            "'include:broken.test': broken.test's TXT could not be read: "
            "no nameserver answered in time",
        ),
        (
            "v=spf1 a:broken.test -all",
            _ME,
            Verdict.TEMPERROR,
            "'a:broken.test': broken.test could not be read: no nameserver answered in time",
        ),
        (
            "v=spf1 include:macro.test -all",
            _ME,
            Verdict.UNKNOWN,
            "'include:macro.test': 'exists:%{i}.x.test' uses SPF macros",
        ),
        ("v=spf1 ptr -all", _ME, Verdict.UNKNOWN, "'ptr' depends on reverse DNS"),
        ("v=spf1 a:bad..name -all", _ME, Verdict.PERMERROR, "'a:bad..name' names no valid domain"),
        (
            "v=spf1 include:nodot -all",
            _ME,
            Verdict.PERMERROR,
            "'include:nodot' names no valid domain",
        ),
        ("v=spf1 redirect=nodot", _ME, Verdict.PERMERROR, "redirect='nodot' is no valid domain"),
        (
            "v=spf1 a:n1.test a:n2.test a:n3.test -all",
            _ME,
            Verdict.PERMERROR,
            "more than 2 look-ups found nothing (RFC 7208 §4.6.4): n3.test",
        ),
        (
            "v=spf1 include:spf.protection.outlook.com -all",
            Provider("Office 365", "spf.protection.outlook.com"),
            Verdict.PASS,
            "'include:spf.protection.outlook.com' at d.test",
        ),
        (
            "v=spf1 ip4:192.0.2.0/24 a mx -all",
            Provider("Google", "_spf.google.com"),
            Verdict.FAIL,
            "'-all' at d.test",
        ),
        (
            "v=spf1 include:inc.test redirect=_spf.google.com",
            Provider("Google", "_spf.google.com"),
            Verdict.PASS,
            "redirect=_spf.google.com at d.test",
        ),
    ],
)
def test_spf_evaluation(record: str, sender: Sender, verdict: Verdict, reason: str) -> None:
    result = evaluate(_TABLE, "d.test", sender, record)

    assert (result.verdict, result.reason) == (verdict, reason)


def test_spf_stops_at_ten_terms_that_query_dns() -> None:
    table = _Table(address_records={f"h{n}.test": ("198.51.100.1",) for n in range(12)})
    record = "v=spf1 " + " ".join(f"a:h{n}.test" for n in range(12)) + " -all"

    result = evaluate(table, "d.test", _ME, record)

    assert result.verdict is Verdict.PERMERROR
    assert result.reason == "more than 10 terms that query DNS (RFC 7208 §4.6.4), at 'a:h10.test'"
    assert len(table.asked) == 10  # the eleventh term is refused before it is looked up
