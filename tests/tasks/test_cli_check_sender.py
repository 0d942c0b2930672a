"""`mailroom check --sender-domain D` through the real CLI against dnsmasq serving the records.

Each test starts a dnsmasq of its own with the records it needs (`make_dns_server`), runs
`python -m tasks.cli check --sender-domain ...` in a subprocess, and asserts on what was printed
and on the look-ups dnsmasq received. Nothing else is contacted: no Redis runs here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.support.dns_server import STANDARD_ZONE, DnsServer, Host, Txt, Zone, txt
from tests.tasks.test_cli import Run, assert_usage_error, run_mailroom

MakeDns = Callable[[Zone], DnsServer]

HELO = "mail.good.test"
HELO_ADDRESS = "203.0.113.5"  # TEST-NET-3: only ever a DNS answer here, never contacted
_PKCS8 = serialization.PrivateFormat.PKCS8


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Key files and their p= values: `rsa`, `ed` (configured) and `other` (published by
    mistake in the mismatch test)."""
    folder = tmp_path_factory.mktemp("dkim")
    made: dict[str, tuple[Path, str]] = {}
    for name, key in (
        ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("other", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ):
        path = folder / f"{name}.pem"
        path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, _PKCS8, serialization.NoEncryption())
        )
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        made[name] = (path, base64.b64encode(spki).decode())
    ed = ed25519.Ed25519PrivateKey.generate()
    path = folder / "ed.pem"
    path.write_bytes(
        ed.private_bytes(serialization.Encoding.PEM, _PKCS8, serialization.NoEncryption())
    )
    raw = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    made["ed"] = (path, base64.b64encode(raw).decode())
    return made


def _good(domain: str, keys: dict[str, tuple[Path, str]]) -> tuple[Txt, ...]:
    """Every record of a well set-up sender domain; the RSA key's record is split over several
    strings (and its long string again by the server), as DNS consoles publish long keys."""
    p_rsa = keys["rsa"][1]
    return (
        txt(domain, "google-site-verification=abc123"),
        txt(domain, "v=spf1 a:mail.good.test include:_spf.partner.test -all"),
        txt(f"s2026._domainkey.{domain}", "v=DKIM1; k=rsa; ", "p=" + p_rsa[:100], p_rsa[100:]),
        txt(f"e2026._domainkey.{domain}", f"v=DKIM1; k=ed25519; p={keys['ed'][1]}"),
        txt(f"_dmarc.{domain}", "v=DMARC1; p=reject; rua=mailto:dmarc@good.test"),
        txt(f"_mta-sts.{domain}", "v=STSv1; id=20260101T000000"),
        txt(f"_smtp._tls.{domain}", "v=TLSRPTv1; rua=mailto:tls@good.test"),
    )


_BASE = STANDARD_ZONE.plus(
    hosts=(Host(HELO, (HELO_ADDRESS,)),),
    txt=(txt("_spf.partner.test", "v=spf1 ip4:198.51.100.0/24 -all"),),
)


def _keys_setting(domain: str, keys: dict[str, tuple[Path, str]]) -> str:
    return json.dumps(
        [
            {"domain": domain, "selector": "s2026", "key_file": str(keys["rsa"][0])},
            {"domain": domain, "selector": "e2026", "key_file": str(keys["ed"][0])},
        ]
    )


def _check(server: DnsServer, tmp_path: Path, *args: str, **env: str) -> Run:
    environment = {
        "MAILROOM_HELO_NAME": HELO,
        "MAILROOM_DNS_NAMESERVERS": f"{server.ip}:{server.port}",
        "MAILROOM_DNS_TIMEOUT": "2",
        **env,
    }
    return run_mailroom("check", *args, env=environment, cwd=tmp_path)


def _line(run: Run, record: str) -> str:
    [line] = [line for line in run.stdout.splitlines() if line.split()[:1] == [record]]
    return line


def test_a_well_set_up_domain_is_ok_on_every_line(
    tmp_path: Path, make_dns_server: MakeDns, keys: dict[str, tuple[Path, str]]
) -> None:
    server = make_dns_server(_BASE.plus(txt=_good("good.test", keys)))
    mark = server.log_mark()

    run = _check(
        server,
        tmp_path,
        "--sender-domain",
        "Good.Test.",
        "--verbose",  # names no Redis: this check uses none
        MAILROOM_DKIM_KEYS=_keys_setting("good.test", keys),
    )

    assert run.status == 0, run
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0] == f"settings     ok    delivery=mx helo={HELO}"
    assert [line.split()[:2] for line in lines[1:-1]] == [
        ["spf", "ok"],
        ["dkim", "ok"],
        ["dkim", "ok"],
        ["dmarc", "ok"],
        ["mta-sts", "ok"],
        ["tls-rpt", "ok"],
    ]
    assert lines[-1] == "OK"
    assert f"authorises this host (HELO_NAME {HELO}), {HELO_ADDRESS}" in _line(run, "spf")
    assert "'a:mail.good.test' at good.test" in _line(run, "spf")
    dkim = [line for line in lines if line.startswith("dkim")]
    assert "s2026._domainkey.good.test: rsa key matches the key file" in dkim[0]
    assert "e2026._domainkey.good.test: ed25519 key matches the key file" in dkim[1]
    assert "p=reject" in _line(run, "dmarc")
    assert "id=20260101T000000" in _line(run, "mta-sts")
    assert "rua=mailto:tls@good.test" in _line(run, "tls-rpt")
    asked = {(q.rdtype, q.name) for q in server.queries_since(mark)}
    assert ("TXT", "good.test") in asked
    assert ("A", HELO) in asked  # what sends: HELO_NAME's addresses, through the resolver
    # a: matched before the include, so the include's record was never needed.
    assert ("TXT", "_spf.partner.test") not in asked


def test_missing_records_each_say_what_to_publish(tmp_path: Path, make_dns_server: MakeDns) -> None:
    server = make_dns_server(_BASE)

    run = _check(server, tmp_path, "--sender-domain", "bare.test")

    assert run.status == 1, run
    spf = _line(run, "spf")
    assert spf.startswith("spf          FAIL  bare.test: no SPF record")
    assert f'to fix: publish TXT "v=spf1 ip4:{HELO_ADDRESS} ~all" at bare.test' in spf
    dkim = _line(run, "dkim")
    assert "FAIL" in dkim
    assert "no key in DKIM_KEYS signs mail From bare.test: it is sent unsigned" in dkim
    assert "MAILROOM_DKIM_KEYS=" in dkim
    dmarc = _line(run, "dmarc")
    assert dmarc.startswith("dmarc        FAIL  _dmarc.bare.test: no DMARC record")
    assert 'publish TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@bare.test"' in dmarc
    assert _line(run, "mta-sts").startswith("mta-sts      WARN  _mta-sts.bare.test: no MTA-STS")
    assert _line(run, "tls-rpt").startswith("tls-rpt      WARN  _smtp._tls.bare.test: no TLS-RPT")
    assert run.stdout.splitlines()[-1] == "FAILED at spf, dkim, dmarc"


def test_a_configured_key_without_its_record_gets_the_record_to_publish(
    tmp_path: Path, make_dns_server: MakeDns, keys: dict[str, tuple[Path, str]]
) -> None:
    records = [r for r in _good("good.test", keys) if not r.name.startswith("s2026.")]
    server = make_dns_server(_BASE.plus(txt=tuple(records)))

    run = _check(
        server,
        tmp_path,
        "--sender-domain",
        "good.test",
        MAILROOM_DKIM_KEYS=_keys_setting("good.test", keys),
    )

    assert run.status == 1, run
    rsa_line, ed_line = [line for line in run.stdout.splitlines() if line.startswith("dkim")]
    assert rsa_line.startswith("dkim         FAIL  s2026._domainkey.good.test: no record")
    assert f'publish TXT "v=DKIM1; k=rsa; p={keys["rsa"][1]}"' in rsa_line
    assert ed_line.startswith("dkim         ok")
    assert run.stdout.splitlines()[-1] == "FAILED at dkim"


def test_an_unreadable_key_file_is_a_failed_line_naming_it(
    tmp_path: Path, make_dns_server: MakeDns, keys: dict[str, tuple[Path, str]]
) -> None:
    server = make_dns_server(_BASE.plus(txt=_good("good.test", keys)))
    missing = tmp_path / "gone.pem"
    setting = [{"domain": "good.test", "selector": "s2026", "key_file": str(missing)}]

    run = _check(
        server, tmp_path, "--sender-domain", "good.test", MAILROOM_DKIM_KEYS=json.dumps(setting)
    )

    assert run.status == 1, run
    assert _line(run, "dkim") == (
        f"dkim         FAIL  s2026._domainkey.good.test: "
        f"key_file {missing}: cannot be read (No such file or directory); "
        "to fix: fix DKIM_KEYS or the key file"
    )


def test_a_dkim_record_of_another_key_is_a_mismatch(
    tmp_path: Path, make_dns_server: MakeDns, keys: dict[str, tuple[Path, str]]
) -> None:
    records = [r for r in _good("good.test", keys) if not r.name.startswith("s2026.")]
    wrong = txt("s2026._domainkey.good.test", f"v=DKIM1; k=rsa; p={keys['other'][1]}")
    server = make_dns_server(_BASE.plus(txt=(*records, wrong)))

    run = _check(
        server,
        tmp_path,
        "--sender-domain",
        "good.test",
        MAILROOM_DKIM_KEYS=_keys_setting("good.test", keys),
    )

    assert run.status == 1, run
    [mismatch] = [line for line in run.stdout.splitlines() if "s2026" in line]
    assert "FAIL" in mismatch
    assert "p= is a different public key than the key file's" in mismatch
    assert f"p={keys['rsa'][1]}" in mismatch  # the fix: the record to publish instead
    assert run.stdout.splitlines()[-1] == "FAILED at dkim"


def test_two_spf_records_fail(tmp_path: Path, make_dns_server: MakeDns) -> None:
    server = make_dns_server(
        _BASE.plus(
            txt=(txt("two.test", "v=spf1 a:mail.good.test -all"), txt("two.test", "v=spf1 mx ~all"))
        )
    )

    run = _check(server, tmp_path, "--sender-domain", "two.test")

    assert run.status == 1, run
    spf = _line(run, "spf")
    assert spf.startswith("spf          FAIL  two.test: 2 SPF records")
    assert "to fix: merge them into one v=spf1 record" in spf


def test_spf_that_authorises_everyone_fails(tmp_path: Path, make_dns_server: MakeDns) -> None:
    server = make_dns_server(_BASE.plus(txt=(txt("open.test", "v=spf1 a:mail.good.test +all"),)))

    run = _check(server, tmp_path, "--sender-domain", "open.test")

    spf = _line(run, "spf")
    assert spf.startswith("spf          FAIL  open.test: it ends in +all: it authorises every")
    assert f"to fix: end it in ~all or -all, with ip4:{HELO_ADDRESS} before" in spf


def test_spf_that_leaves_this_host_out_says_what_to_add(
    tmp_path: Path, make_dns_server: MakeDns
) -> None:
    server = make_dns_server(
        _BASE.plus(txt=(txt("strict.test", "v=spf1 include:_spf.partner.test mx -all"),))
    )
    mark = server.log_mark()

    run = _check(server, tmp_path, "--sender-domain", "strict.test")

    spf = _line(run, "spf")
    assert "FAIL" in spf
    assert f"does not authorise this host (HELO_NAME {HELO}), {HELO_ADDRESS}" in spf
    assert "(fail by '-all' at strict.test)" in spf
    assert f"to fix: add ip4:{HELO_ADDRESS} before the record's all" in spf
    asked = {(q.rdtype, q.name) for q in server.queries_since(mark)}
    assert ("TXT", "_spf.partner.test") in asked
    assert ("MX", "strict.test") in asked


def test_dmarc_p_none_is_monitoring_only(tmp_path: Path, make_dns_server: MakeDns) -> None:
    server = make_dns_server(_BASE.plus(txt=(txt("_dmarc.watch.test", "v=DMARC1;p=none"),)))

    run = _check(server, tmp_path, "--sender-domain", "watch.test")

    dmarc = _line(run, "dmarc")
    assert dmarc.startswith("dmarc        WARN  _dmarc.watch.test: p=none")
    assert "no rua=" in dmarc
    assert "monitoring only" in dmarc
    assert "move to p=quarantine, then p=reject" in dmarc
    assert "dmarc" not in run.stdout.splitlines()[-1]  # a warning, not a failure


def test_a_servfail_domain_could_not_be_read_rather_than_missing(
    tmp_path: Path, make_dns_server: MakeDns
) -> None:
    server = make_dns_server(_BASE)

    run = _check(server, tmp_path, "--sender-domain", "servfail.test")

    assert run.status == 1, run
    for record in ("spf", "dmarc", "mta-sts", "tls-rpt"):
        line = _line(run, record)
        assert "FAIL" in line
        assert "could not be read: no nameserver gave an answer (SERVFAIL or refused)" in line
        assert "no " + record.upper() not in line
    assert run.stdout.splitlines()[-1] == "FAILED at spf, dkim, dmarc, mta-sts, tls-rpt"


def test_json_report_has_one_object_per_record(
    tmp_path: Path, make_dns_server: MakeDns, keys: dict[str, tuple[Path, str]]
) -> None:
    records = [r for r in _good("good.test", keys) if not r.name.startswith("_dmarc.")]
    server = make_dns_server(_BASE.plus(txt=tuple(records)))

    run = _check(
        server,
        tmp_path,
        "--sender-domain",
        "good.test",
        "--json",
        MAILROOM_DKIM_KEYS=_keys_setting("good.test", keys),
    )

    assert run.status == 1, run
    report = json.loads(run.stdout)
    assert set(report) == {"ok", "domain", "settings", "records"}
    assert report["ok"] is False
    assert report["domain"] == "good.test"
    assert report["settings"] == {"ok": True, "delivery": "mx", "helo": HELO}
    assert [(r["record"], r["name"], r["status"]) for r in report["records"]] == [
        ("spf", "good.test", "ok"),
        ("dkim", "s2026._domainkey.good.test", "ok"),
        ("dkim", "e2026._domainkey.good.test", "ok"),
        ("dmarc", "_dmarc.good.test", "fail"),
        ("mta-sts", "_mta-sts.good.test", "ok"),
        ("tls-rpt", "_smtp._tls.good.test", "ok"),
    ]
    for record in report["records"]:
        assert set(record) == {"record", "name", "status", "detail", "fix", "value"}
    spf = report["records"][0]
    assert spf["value"] == "v=spf1 a:mail.good.test include:_spf.partner.test -all"
    assert spf["fix"] is None
    assert report["records"][1]["value"] == "v=DKIM1; k=rsa; p=" + keys["rsa"][1]
    assert report["records"][3]["value"] is None
    assert report["records"][3]["fix"].startswith('publish TXT "v=DMARC1; p=none;')


def test_a_relay_profile_is_authorised_by_its_include(
    tmp_path: Path, make_dns_server: MakeDns
) -> None:
    server = make_dns_server(
        _BASE.plus(
            txt=(
                txt("o365.test", "v=spf1 include:spf.protection.outlook.com -all"),
                txt("gmail.test", "v=spf1 include:_spf.partner.test -all"),
            )
        )
    )
    relay = {
        "MAILROOM_DELIVERY": "relay",
        "MAILROOM_RELAY_HOST": "smtp.office365.com",
        "MAILROOM_RELAY_PROFILE": "office365",
    }
    mark = server.log_mark()

    good = _check(server, tmp_path, "--sender-domain", "o365.test", **relay)
    bad = _check(server, tmp_path, "--sender-domain", "gmail.test", **relay)

    assert (
        "spf          ok    o365.test: authorises Office 365 (RELAY_PROFILE=office365)"
        in good.stdout
    )
    spf = _line(bad, "spf")
    assert "does not authorise Office 365" in spf
    assert "to fix: add include:spf.protection.outlook.com before the record's all" in spf
    # The provider's include names it: its own record (outside .test) is never looked up.
    asked = {q.name for q in server.queries_since(mark)}
    assert "spf.protection.outlook.com" not in asked
    assert "WARN" in _line(good, "dkim")  # no key: Mailroom does not sign, the relay may


def test_a_relay_without_a_profile_is_judged_by_its_addresses(
    tmp_path: Path, make_dns_server: MakeDns
) -> None:
    server = make_dns_server(
        _BASE.plus(
            hosts=(Host("relay.good.test", ("203.0.113.9",)),),
            txt=(
                txt("relayed.test", "v=spf1 ip4:203.0.113.8/31 -all"),
                txt("_dmarc.relayed.test", "v=DMARC1; p=quarantine; adkim=s; rua=mailto:d@x.test"),
                txt("_dmarc.sub.relayed.test", "v=DMARC1; p=reject; adkim=s; rua=mailto:d@x.test"),
            ),
        )
    )
    dkim_file = tmp_path / "k.pem"
    dkim_file.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, _PKCS8, serialization.NoEncryption()
        )
    )
    key = {"domain": "relayed.test", "selector": "s1", "key_file": str(dkim_file)}
    relay = {
        "MAILROOM_DELIVERY": "relay",
        "MAILROOM_RELAY_HOST": "relay.good.test",
        "MAILROOM_DKIM_KEYS": json.dumps([{**key, "subdomains": True}]),
    }

    run = _check(server, tmp_path, "--sender-domain", "sub.relayed.test", **relay)

    assert run.stdout.splitlines()[0] == (
        "settings     ok    delivery=relay relay.good.test (profile none) helo=mail.good.test"
    )
    # SPF has no parent fallback: the relay's address is what to publish.
    spf = _line(run, "spf")
    assert spf.startswith("spf          FAIL  sub.relayed.test: no SPF record")
    assert 'publish TXT "v=spf1 ip4:203.0.113.9 ~all" at sub.relayed.test' in spf
    # The parent domain's key signs the subdomain's mail (d=relayed.test): adkim=s breaks that.
    assert "s1._domainkey.relayed.test" in _line(run, "dkim")
    dmarc = _line(run, "dmarc")
    assert dmarc.startswith("dmarc        ok    _dmarc.sub.relayed.test: p=reject;")
    assert "adkim=s: a key of a parent domain (d=) does not align with sub.relayed.test" in dmarc

    parent = _check(server, tmp_path, "--sender-domain", "relayed.test", **relay)

    assert "authorises the relay relay.good.test (RELAY_HOST), 203.0.113.9" in _line(parent, "spf")
    assert _line(parent, "dmarc").startswith("dmarc        ok    _dmarc.relayed.test: p=quarantine")
    assert "adkim=s" not in _line(parent, "dmarc")

    inherits = _check(server, tmp_path, "--sender-domain", "other.relayed.test", **relay)

    assert _line(inherits, "dmarc").startswith(
        "dmarc        ok    _dmarc.relayed.test: p=quarantine (the record of a parent domain "
        "applies to other.relayed.test)"
    )


def test_a_host_behind_nat_cannot_be_judged(tmp_path: Path, make_dns_server: MakeDns) -> None:
    server = make_dns_server(
        _BASE.plus(
            hosts=(Host("inside.good.test", ("10.1.2.3",)),),
            txt=(txt("nat.test", "v=spf1 ip4:198.51.100.7 -all"),),
        )
    )

    run = _check(
        server, tmp_path, "--sender-domain", "nat.test", MAILROOM_HELO_NAME="inside.good.test"
    )

    spf = _line(run, "spf")
    assert spf.startswith("spf          WARN  nat.test: present; whether it authorises this host")
    assert "10.1.2.3 is a private address" in spf
    assert "Mailroom does not know (it asks no outside service)" in spf


def test_more_than_ten_dns_terms_is_a_permanent_error(
    tmp_path: Path, make_dns_server: MakeDns
) -> None:
    chain = tuple(
        txt(f"i{n}.chain.test", f"v=spf1 include:i{n + 1}.chain.test -all") for n in range(12)
    )
    server = make_dns_server(
        _BASE.plus(txt=(txt("chain.test", "v=spf1 include:i0.chain.test -all"), *chain))
    )
    mark = server.log_mark()

    run = _check(server, tmp_path, "--sender-domain", "chain.test")

    spf = _line(run, "spf")
    assert "FAIL" in spf
    assert "more than 10 terms that query DNS (RFC 7208 §4.6.4)" in spf
    asked = [q.name for q in server.queries_since(mark) if q.rdtype == "TXT" and "chain" in q.name]
    assert "i9.chain.test" in asked
    assert "i10.chain.test" not in asked  # the 11th include is refused, not looked up


def test_hostile_record_bytes_are_escaped(tmp_path: Path, make_dns_server: MakeDns) -> None:
    server = make_dns_server(
        _BASE.plus(
            txt=(
                txt("evil.test", b"v=spf1 \x1b[2J\x07 -all"),
                txt("_dmarc.evil.test", b"v=DMARC1; p=bogus\x1b[31m\x07" + b"x" * 2000),
            )
        )
    )

    run = _check(server, tmp_path, "--sender-domain", "evil.test")
    as_json = _check(server, tmp_path, "--sender-domain", "evil.test", "--json")

    assert "\x1b" not in run.stdout
    assert "\x07" not in run.stdout
    assert "unknown term '\\x1b[2J\\x07'" in _line(run, "spf")
    dmarc = _line(run, "dmarc")
    assert "p= must be none, quarantine or reject" in dmarc
    assert 'found "v=DMARC1; p=bogus\\x1b[31m\\x07xxx' in dmarc
    assert len(dmarc) < 600  # the record is echoed cut short
    assert "\x1b" not in as_json.stdout
    [_, _, dmarc_json, *_] = json.loads(as_json.stdout)["records"]
    value = dmarc_json["value"]
    assert value.startswith("v=DMARC1; p=bogus\\x1b[31m\\x07")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ("--sender-domain", "not a domain"),
            ("--sender-domain", "'not a domain'", "not a valid domain name"),
        ),
        (("--sender-domain", "localhost"), ("not a valid domain name",)),
        (
            ("--sender-domain", "a.test", "--domain", "b.test"),
            ("cannot be combined with --domain",),
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, dns_server: DnsServer, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    mark = dns_server.log_mark()

    run = _check(dns_server, tmp_path, *args)

    assert_usage_error(run, *words)
    assert dns_server.queries_since(mark) == []


def test_a_nameserver_that_never_answers_is_a_timeout_on_every_line(
    tmp_path: Path, dns_blackhole: tuple[str, int]
) -> None:
    ip, port = dns_blackhole

    run = run_mailroom(
        "check",
        "--sender-domain",
        "quiet.test",
        env={
            "MAILROOM_HELO_NAME": HELO,
            "MAILROOM_DNS_NAMESERVERS": f"{ip}:{port}",
            "MAILROOM_DNS_TIMEOUT": "0.3",
        },
        cwd=tmp_path,
    )

    assert run.status == 1, run
    for record in ("spf", "dmarc", "mta-sts", "tls-rpt"):
        line = _line(run, record)
        assert line.split()[1] == "FAIL"
        assert line.endswith("could not be read: no nameserver answered in time")
