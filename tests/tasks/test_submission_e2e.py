"""SMTP submission end to end: a real client → the listener → Redis → a Celery worker → the sink.

Real clients (Python's smtplib and Debian's swaks) connect to the listener on 127.0.0.20 over
STARTTLS, verifying its trustme certificate, and authenticate; an embedded Celery worker delivers
to the aiosmtpd sink that dnsmasq's zone names as implicit.test's mail host (127.0.0.5).
Assertions are on what the sink received.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from settings import Settings
from tests.support.smtp_sink import MakeSink, Sink
from tests.support.tls_material import TlsMaterial
from tests.tasks.conftest import Deploy, Deployment
from tests.tasks.pipeline_support import running_worker, wait_for
from tests.tasks.submission_support import (
    CERT_NAME,
    PASSWORD,
    SENDER,
    USER,
    connect,
    message,
    running_listener,
    submission_settings,
)
from workers.queue.events import EventLog
from workers.queue.status import StatusStore

pytestmark = pytest.mark.slow  # a Celery worker starts in each test

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"


@dataclass(frozen=True)
class Setup:
    """A deployment, the sink as implicit.test's mail host, and listener settings for both."""

    settings: Settings
    deployment: Deployment
    sink: Sink


@pytest.fixture
def sink(make_sink: MakeSink, mx_port: int) -> Sink:
    return make_sink("127.0.0.5", port=mx_port)


@pytest.fixture
def setup(tmp_path: Path, tls: TlsMaterial, deploy: Deploy, sink: Sink) -> Setup:
    deployment = deploy()
    settings = submission_settings(tmp_path, tls, deployment.settings.redis_url)
    return Setup(settings, deployment, sink)


def delivered(client: redis.Redis, message_id: str) -> bool:
    view = StatusStore(client, ttl=60).view(message_id)
    return view is not None and view["state"] == "delivered"


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWAKS, "--ehlo", "app.example.test", "--timeout", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_smtplib_message_is_delivered_with_trace_and_without_bcc(
    setup: Setup, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    settings, deployment, sink = setup.settings, setup.deployment, setup.sink
    body = "Dear Zoë,\r\n.leading dot survives\r\n\r\nregards"
    data = message(extra="Bcc: hidden@implicit.test\r\n", body=body)
    with running_listener(settings, producer=deployment.mailroom):
        client = connect(settings, tls)
        client.login(USER, PASSWORD)
        client.mail(SENDER, ["SMTPUTF8", "BODY=8BITMIME"])
        client.rcpt("zoe@implicit.test")
        client.rcpt("hidden@implicit.test")
        code, reply = client.data(data)
        client.quit()
    assert code == 250
    message_id = reply.decode().split()[-1]

    with running_worker(deployment.app):
        wait_for(lambda: delivered(redis_client, message_id), what="delivery")

    [received] = sink.messages
    assert received.mail_from == SENDER
    assert sorted(received.rcpt_tos) == ["hidden@implicit.test", "zoe@implicit.test"]
    headers = received.headers()
    assert headers["Message-ID"] == f"<{message_id}@example.test>"
    assert "Bcc" not in headers
    assert f"with ESMTPSA id {message_id}" in str(headers["Received"])
    # Everything the application wrote arrives as it wrote it, body bytes included.
    assert received.content.endswith(data.split(b"\r\n\r\n", 1)[1])
    assert b"\r\nSubject: Invoice\r\n" in received.content


def test_swaks_submits_over_starttls_and_the_message_is_delivered(
    setup: Setup, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    settings, deployment, sink = setup.settings, setup.deployment, setup.sink
    listen = settings.submission_listen
    server = ["--server", listen.host, "--port", str(listen.port)]
    common = [*server, "--from", SENDER, "--to", "max@implicit.test"]
    verified_tls = ["--tls", "--tls-verify", "--tls-ca-path", str(tls.ca_file)]
    verified_tls += ["--tls-sni", CERT_NAME]
    with running_listener(settings, producer=deployment.mailroom):
        # Without TLS, AUTH is not even offered: swaks gives up before sending a password.
        plain = swaks(*common, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", "x")
        assert plain.returncode != 0
        assert "AUTH" not in "".join(
            line for line in plain.stdout.splitlines() if line.startswith(" -> ")
        )
        wrong = swaks(
            *common, *verified_tls, "--auth", "LOGIN", "--auth-user", USER,
            "--auth-password", "wrong",
        )  # fmt: skip
        assert wrong.returncode != 0
        assert "<~* 535 5.7.8" in wrong.stdout

        sent = swaks(
            *common, *verified_tls, "--auth", "LOGIN", "--auth-user", USER,
            "--auth-password", PASSWORD,
            "--header", "Subject: sent by swaks", "--body", "Hello from swaks",
        )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    [queued] = [line for line in sent.stdout.splitlines() if "Ok: queued as" in line]
    message_id = queued.split()[-1]
    assert "250 2.0.0" in queued

    with running_worker(deployment.app):
        wait_for(lambda: delivered(redis_client, message_id), what="delivery")
    [received] = sink.messages
    assert received.rcpt_tos == ("max@implicit.test",)
    assert str(received.headers()["Subject"]) == "sent by swaks"
    assert b"Hello from swaks" in received.content
    assert f"with ESMTPSA id {message_id}".encode() in received.content


def test_tags_and_metadata_headers_reach_the_events_and_never_the_receiver(
    setup: Setup, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    settings, deployment, sink = setup.settings, setup.deployment, setup.sink
    labels = 'X-Mailroom-Tags: invoice, eu\r\nX-Mailroom-Metadata: {"invoice_id":\r\n "42"}\r\n'
    with running_listener(settings, producer=deployment.mailroom):
        client = connect(settings, tls)
        client.login(USER, PASSWORD)
        client.mail(SENDER)
        client.rcpt("zoe@implicit.test")
        code, reply = client.data(message(extra=labels))
        client.mail(SENDER)
        client.rcpt("zoe@implicit.test")
        refused, why = client.data(message(extra="X-Mailroom-Metadata: [1, 2]\r\n"))
        client.quit()
    assert code == 250
    assert (refused, why) == (554, b"5.6.0 X-Mailroom-Metadata: not a JSON object")
    message_id = reply.decode().split()[-1]
    with running_worker(deployment.app):
        wait_for(lambda: delivered(redis_client, message_id), what="delivery")
    [received] = sink.messages
    assert b"X-Mailroom" not in received.content
    events = [e for e in EventLog(redis_client).page("0-0", 50) if e["message_id"] == message_id]
    assert [e["type"] for e in events] == ["queued", "delivered"]
    assert all(e["tags"] == ["invoice", "eu"] for e in events)
    assert all(e["metadata"] == {"invoice_id": "42"} for e in events)
