"""`mailroom check` against a real Redis, real SMTP sinks and dnsmasq, through the real CLI.

Each test runs `python -m tasks.cli check ...` in a subprocess with only the MAILROOM_*
variables it sets, and asserts on what was printed and on what the sink saw.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.dns_server import DnsServer
from tests.support.smtp_sink import MakeSink
from tests.support.tls_material import TlsMaterial
from tests.tasks.dkim_support import (
    DOMAIN,
    OTHER_DOMAIN,
    SUBMISSION_DOMAIN,
    KeySet,
    dkim_dns,
    dkim_keys,
    verify,
)
from tests.tasks.test_cli import Run, assert_usage_error, run_mailroom

__all__ = ["dkim_dns", "dkim_keys"]  # fixtures

RELAY_PASSWORD = "relay-pw-s3cret-71"
REDIS_PASSWORD = "redis-pw-s3cret-42"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of this module's own, on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run the project's setup script (scripts/)"
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, "redis-server exited at start-up"
                assert time.monotonic() < deadline, "redis-server did not start within 10 s"
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "MAILROOM_REDIS_URL": redis_url,
        "MAILROOM_HELO_NAME": "client.mailroom.test",
        "MAILROOM_CONNECT_TIMEOUT": "2",
        "MAILROOM_COMMAND_TIMEOUT": "5",
        "MAILROOM_DATA_TIMEOUT": "5",
        "MAILROOM_SESSION_TIMEOUT": "10",
        "MAILROOM_DNS_TIMEOUT": "2",
        **extra,
    }


def _mx_env(redis_url: str, dns_server: DnsServer, mx_port: int) -> dict[str, str]:
    return _env(
        redis_url,
        MAILROOM_DNS_NAMESERVERS=f"{dns_server.ip}:{dns_server.port}",
        MAILROOM_MX_PORT=str(mx_port),
    )


def _lines(run: Run, first_word: str) -> list[str]:
    return [line for line in run.stdout.splitlines() if line.split()[:1] == [first_word]]


def test_mx_probe_walks_every_step_and_sends_no_message(
    tmp_path: Path, redis_url: str, dns_server: DnsServer, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5")

    run = run_mailroom(
        "check",
        "--domain",
        "implicit.test",
        env=_mx_env(redis_url, dns_server, sink.port),
        cwd=tmp_path,
    )

    assert run.status == 0, run
    assert run.stderr == ""
    assert _lines(run, "redis") == [f"redis        ok    {redis_url}"]
    assert _lines(run, "dkim") == [
        "dkim         none  no DKIM_KEYS: mail From every domain goes out unsigned"
    ]
    [resolved] = _lines(run, "resolve_mx")
    assert "implicit.test -> implicit.test[127.0.0.5]" in resolved
    assert any("connect" in line and "127.0.0.5" in line for line in _lines(run, "open_session"))
    [mail_from] = _lines(run, "mail_from")
    assert "250" in mail_from
    [rcpt] = _lines(run, "rcpt_to")
    assert "250" in rcpt
    assert "result  accepted  250" in run.stdout
    assert run.stdout.splitlines()[-1] == "OK"
    [session] = sink.sessions
    assert session.helo == "client.mailroom.test"
    assert [m.address for m in session.mail_from] == ["postmaster@client.mailroom.test"]
    assert [r.address for r in session.rcpt_to] == ["postmaster@implicit.test"]
    assert sink.received == []


def test_send_to_delivers_one_real_test_message(
    tmp_path: Path, redis_url: str, dns_server: DnsServer, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5")

    run = run_mailroom(
        "check",
        "--send-to",
        "a@implicit.test",
        "--from",
        "ops@client.mailroom.test",
        env=_mx_env(redis_url, dns_server, sink.port),
        cwd=tmp_path,
    )

    assert run.status == 0, run
    assert "result  delivered  250" in run.stdout
    [message] = sink.received
    assert message.rcpt_tos == ("a@implicit.test",)
    assert message.mail_from == "ops@client.mailroom.test"
    assert message.headers()["Subject"] == "Mailroom check"
    assert message.accepted


def test_dkim_line_names_signed_domains_and_the_test_message_is_signed(
    tmp_path: Path,
    redis_url: str,
    dns_server: DnsServer,
    make_sink: MakeSink,
    dkim_keys: KeySet,
    dkim_dns: DnsServer,
) -> None:
    sink = make_sink("127.0.0.5")
    configs = [
        {"domain": k.domain, "selector": k.selector, "key_file": str(k.key_file)}
        | ({"subdomains": True} if k.subdomains else {})
        for k in dkim_keys.configs
    ]
    env = _mx_env(redis_url, dns_server, sink.port) | {"MAILROOM_DKIM_KEYS": json.dumps(configs)}
    sent = ["check", "--send-to", "a@implicit.test", "--from", f"ops@{DOMAIN}"]

    run = run_mailroom(*sent, env=env, cwd=tmp_path)
    unsigned = run_mailroom("check", "--domain", "implicit.test", env=env, cwd=tmp_path)

    assert run.status == 0, run
    assert _lines(run, "dkim") == [
        f"dkim         ok    signs From {DOMAIN} (s=rsa rsa-sha256, s=ed ed25519-sha256), "
        f"{OTHER_DOMAIN} and its subdomains (s=s1 rsa-sha256), {SUBMISSION_DOMAIN} "
        f"(s=sub ed25519-sha256); this check's From {DOMAIN} is signed"
    ]
    [dkim] = _lines(unsigned, "dkim")
    assert dkim.endswith(
        "this check's From client.mailroom.test has no key: its mail goes out unsigned"
    )
    [message] = sink.received
    assert verify(message.content, dkim_dns, 0)
    assert verify(message.content, dkim_dns, 1)
    missing = json.dumps([{"domain": DOMAIN, "selector": "x", "key_file": "/nonexistent.pem"}])
    refused = run_mailroom(*sent, env=env | {"MAILROOM_DKIM_KEYS": missing}, cwd=tmp_path)
    assert_usage_error(refused, f"MAILROOM_DKIM_KEYS: x._domainkey.{DOMAIN}: key_file")


def test_json_report_has_ok_redis_steps_and_outcome(
    tmp_path: Path, redis_url: str, dns_server: DnsServer, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5")

    run = run_mailroom(
        "check",
        "--domain",
        "implicit.test",
        "--json",
        env=_mx_env(redis_url, dns_server, sink.port),
        cwd=tmp_path,
    )

    assert run.status == 0, run
    report = json.loads(run.stdout)
    assert report["ok"] is True
    assert report["redis"] == {"ok": True, "url": redis_url, "error": None}
    steps = [step["step"] for step in report["steps"]]
    assert steps[0] == "resolve_mx"
    assert {"open_session", "mail_from", "rcpt_to"} <= set(steps)
    assert report["outcome"]["result"] == "accepted"
    assert report["outcome"]["step"] == "rcpt_to"
    assert report["outcome"]["code"] == 250


def test_null_mx_fails_at_resolve_mx_with_556(
    tmp_path: Path, redis_url: str, dns_server: DnsServer
) -> None:
    run = run_mailroom(
        "check",
        "--domain",
        "nullmx.test",
        env=_mx_env(redis_url, dns_server, _free_port()),
        cwd=tmp_path,
    )

    assert run.status == 1, run
    last = run.stdout.splitlines()[-1]
    assert last.startswith("FAILED at resolve_mx: 556 5.1.10")
    assert "result  bounced  556 5.1.10" in run.stdout


def test_self_signed_relay_fails_at_open_session_and_never_sends_the_password(
    tmp_path: Path, redis_url: str, make_sink: MakeSink, tls: TlsMaterial
) -> None:
    sink = make_sink(
        "127.0.0.1",
        starttls_context=tls.self_signed_context("localhost"),
        require_starttls=True,
        auth=("svc", RELAY_PASSWORD),
    )
    env = _env(
        redis_url,
        MAILROOM_DELIVERY="relay",
        MAILROOM_RELAY_HOST="localhost",
        MAILROOM_RELAY_PORT=str(sink.port),
        MAILROOM_RELAY_USERNAME="svc",
        MAILROOM_RELAY_PASSWORD=RELAY_PASSWORD,
        MAILROOM_TLS_CA_FILE=str(tls.ca_file),
    )

    for args in (("check",), ("check", "--json")):
        run = run_mailroom(*args, env=env, cwd=tmp_path)

        assert run.status == 1, run
        assert RELAY_PASSWORD not in run.stdout + run.stderr
        assert "4.7.5" in run.stdout
    run = run_mailroom("check", env=env, cwd=tmp_path)
    assert run.stdout.splitlines()[-1].startswith("FAILED at open_session: 421 4.7.5")
    assert sink.auth_attempts == []
    assert sink.received == []


def test_redis_down_is_a_failed_line_without_its_password(
    tmp_path: Path, dns_server: DnsServer, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5")
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{_free_port()}/0"

    run = run_mailroom(
        "check",
        "--domain",
        "implicit.test",
        env=_mx_env(url, dns_server, sink.port),
        cwd=tmp_path,
    )

    assert run.status == 1, run
    assert REDIS_PASSWORD not in run.stdout + run.stderr
    [line] = _lines(run, "redis")
    assert line.startswith("redis        FAIL  redis://:***@127.0.0.1:")
    assert run.stdout.splitlines()[-1].startswith("FAILED at redis: ")
    # The delivery path is still checked, so the operator sees everything that is wrong at once.
    assert [r.address for r in sink.sessions[0].rcpt_to] == ["postmaster@implicit.test"]


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (("check",), {}, ("--domain",)),
        (("check", "--send-to", "not-an-address"), {}, ("--send-to", "not-an-address")),
        (("check", "--domain", "x.test", "--from", "nobody"), {}, ("--from", "nobody")),
        (("check", "--domain", "bad..test"), {}, ("--domain",)),
        (("check", "--domain", "a.test", "--send-to", "b@b.test"), {}, ("--domain", "b@b.test")),
        (("check", "--domain", "x.test"), {"MAILROOM_DELIVERY": "smtp"}, ("MAILROOM_DELIVERY",)),
    ],
    ids=["mx-without-domain", "bad-send-to", "bad-from", "bad-domain", "send-to-elsewhere", "smtp"],
)
def test_bad_input_is_one_line_exit_2_and_nothing_contacted(
    tmp_path: Path,
    make_sink: MakeSink,
    args: tuple[str, ...],
    env: dict[str, str],
    words: tuple[str, ...],
) -> None:
    sink = make_sink("127.0.0.1")
    run = run_mailroom(
        *args,
        env=_env(
            f"redis://127.0.0.1:{_free_port()}/0",
            MAILROOM_DNS_NAMESERVERS=f"127.0.0.1:{sink.port}",
            MAILROOM_MX_PORT=str(sink.port),
            **env,
        ),
        cwd=tmp_path,
    )

    assert_usage_error(run, *words)
    assert sink.sessions == []
