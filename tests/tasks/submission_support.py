"""Helpers of the submission tests: accounts, a listener on loopback, and connected clients.

The listener runs the production `build_server` with test settings: a trustme certificate for
`submission.test` and its loopback address (so clients verify it), an account file, and the
test's Redis. Clients are the stdlib's `smtplib` (and swaks in the end-to-end tests), never a
hand-rolled protocol.
"""

from __future__ import annotations

import base64
import functools
import smtplib
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from settings import Settings
from tasks.submission.accounts import new_account
from tasks.submission.auth_limits import AuthFailureLimiter
from tasks.submission.handler import Producer
from tasks.submission.server import SubmissionServer, build_server
from tests.support.tls_material import CertFiles, TlsMaterial

HOST = "127.0.0.20"  # the listener's address: the sinks use 127.0.0.2-9
OTHER_CLIENT = "127.0.0.21"  # a second client address, for per-address limits
CERT_NAME = "submission.test"
USER = "billing-app"
PASSWORD = "correct horse battery staple"
RESTRICTED_USER = "restricted-app"  # may send only as alerts@example.test or from @ops.example.test
RESTRICTED_PASSWORD = "another long passphrase"
SENDER = "billing@example.test"


@functools.cache
def account_lines() -> str:
    """The account file's text (hashed once per test session: scrypt takes ~50 ms a hash)."""
    lines = [
        "# test accounts",
        new_account(USER, PASSWORD).line(),
        "",
        new_account(
            RESTRICTED_USER, RESTRICTED_PASSWORD, ["alerts@example.test", "@ops.example.test"]
        ).line(),
    ]
    return "\n".join(lines) + "\n"


def free_port(host: str = HOST) -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def certificate(tls: TlsMaterial, host: str = HOST) -> CertFiles:
    """The listener's certificate, valid for CERT_NAME and `host`."""
    return tls.server_cert(CERT_NAME, host)


def submission_settings(
    tmp_path: Path, tls: TlsMaterial, redis_url: str, host: str = HOST, **overrides: Any
) -> Settings:
    """Settings of a listener on `host` (a free port) with the test accounts and certificate."""
    accounts = tmp_path / "accounts"
    accounts.write_text(account_lines())
    cert = certificate(tls, host)
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "shards": 4,
        "helo_name": "submission.mailroom.test",
        "submission_listen": f"{host}:{free_port(host)}",
        "submission_cert_file": cert.chain,
        "submission_key_file": cert.key,
        "submission_accounts": accounts,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_listener(
    settings: Settings,
    *,
    producer: Producer | None = None,
    limiter: AuthFailureLimiter | None = None,
) -> Iterator[SubmissionServer]:
    """The listener of `settings`, serving until the block ends."""
    server = build_server(settings, producer=producer, limiter=limiter)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=5)


def connect(
    settings: Settings, tls: TlsMaterial, *, starttls: bool = True, source: str | None = None
) -> smtplib.SMTP:
    """An smtplib client of the listener, after EHLO (and STARTTLS and EHLO again)."""
    listen = settings.submission_listen
    client = smtplib.SMTP(
        listen.host,
        listen.port,
        local_hostname="app.example.test",
        timeout=10,
        source_address=(source, 0) if source else None,
    )
    client.ehlo()
    if starttls:
        client.starttls(context=tls.client_context())
        client.ehlo()
    return client


def auth_plain(client: smtplib.SMTP, username: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN with an initial response, as sent; returns the reply."""
    blob = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    return client.docmd("AUTH", f"PLAIN {blob}")


def message(
    subject: str = "Invoice", to: str = "zoe@implicit.test", extra: str = "", body: str = "Hello"
) -> bytes:
    """A small RFC 5322 message, CRLF line ends, no Message-ID or Date (the listener adds them)."""
    return (
        f"From: Billing <{SENDER}>\r\nTo: {to}\r\n{extra}Subject: {subject}\r\n\r\n{body}\r\n"
    ).encode()
