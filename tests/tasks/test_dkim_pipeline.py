"""DKIM end to end: messages signed once when built (notify(), the mailroom.notify task) or
received (SMTP submission), delivered by a real Celery worker to an aiosmtpd sink, and the bytes
the sink received verified by dkimpy against DNS records served by dnsmasq."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from tasks.cli import main
from tests.support.dns_server import DnsServer
from tests.support.smtp_sink import MakeSink
from tests.support.tls_material import TlsMaterial
from tests.tasks.conftest import Deploy
from tests.tasks.dkim_support import DOMAIN, KeySet, dkim_dns, dkim_keys, verify
from tests.tasks.pipeline_support import running_worker, wait_for
from tests.tasks.submission_support import (
    PASSWORD,
    SENDER,
    USER,
    connect,
    message,
    running_listener,
    submission_settings,
)
from tests.tasks.test_cli import assert_usage_error, run_mailroom
from workers.queue.content import ContentStore

__all__ = ["dkim_dns", "dkim_keys"]  # fixtures


def test_notify_signs_once_and_the_sink_receives_a_valid_signature(
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
    dkim_keys: KeySet,
    dkim_dns: DnsServer,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, mailroom = deploy(dkim_keys=dkim_keys.configs)
    signed_id = mailroom.notify(
        sender=f"Shop <shop@{DOMAIN}>",
        to=["Zoë <zoe@implicit.test>", "max@implicit.test"],
        subject="Ihre Bestellung für Zoë",
        text="Hello Zoë,\nyour order is on its way.",
        html="<p>Hello Zoë</p>",
    )
    unsigned_id = mailroom.notify(
        sender="other@example.org", to=["zoe@implicit.test"], subject="x", text="y"
    )
    # Signed when built: the stored content holds the signatures already.
    stored = ContentStore(redis_client, 60).get(signed_id)
    assert stored is not None
    assert stored.data.count(b"DKIM-Signature:") == 2

    app.send_task(
        "mailroom.notify",
        kwargs={
            "sender": f"ops@{DOMAIN}",
            "to": ["ops@implicit.test"],
            "subject": "s",
            "text": "t",
            "list_unsubscribe": ["https://ops.mailroom.test/u?id=1", "mailto:u@mailroom.test"],
            "one_click": True,
        },
        queue="mailroom.intake",
    )
    with running_worker(app):
        wait_for(lambda: len(sink.messages) == 3, what="three messages")

    by_subject = {str(m.headers()["Subject"]): m.content for m in sink.messages}
    signed = by_subject["Ihre Bestellung für Zoë"]
    assert signed == stored.data  # the same bytes for every recipient: signed once
    assert verify(signed, dkim_dns, 0)
    assert verify(signed, dkim_dns, 1)
    assert b"DKIM-Signature" not in by_subject["x"]
    # The intake task signs as notify() does, List-Unsubscribe(-Post) included.
    assert verify(by_subject["s"], dkim_dns, 0)
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in by_subject["s"]
    assert b":list-unsubscribe:list-unsubscribe-post;" in b"".join(by_subject["s"].split(b"\r\n "))
    assert unsigned_id != signed_id


def test_submitted_message_is_signed_by_the_listener_path(
    tmp_path: Path,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
    dkim_keys: KeySet,
    dkim_dns: DnsServer,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    deployment = deploy(dkim_keys=dkim_keys.configs)
    settings = submission_settings(tmp_path, tls, deployment.settings.redis_url)
    data = message(body="no final newline")[:-2]
    with running_listener(settings, producer=deployment.mailroom):
        client = connect(settings, tls)
        client.login(USER, PASSWORD)
        refused = client.sendmail(SENDER, ["zoe@implicit.test"], data)
        client.quit()
    assert refused == {}
    with running_worker(deployment.app):
        wait_for(lambda: len(sink.messages) == 1, what="the submitted message")
    [received] = sink.messages
    assert received.content.count(b"DKIM-Signature:") == 1
    assert verify(received.content, dkim_dns)


def test_an_unreadable_key_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.pem"
    monkeypatch.setenv(
        "MAILROOM_DKIM_KEYS",
        f'[{{"domain": "{DOMAIN}", "selector": "s", "key_file": "{missing}"}}]',
    )
    assert main(["send", "--from", f"a@{DOMAIN}", "--to", "b@x.test", "--subject", "s",
                 "--text", "t"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"mailroom: MAILROOM_DKIM_KEYS: s._domainkey.{DOMAIN}: key_file ")
    assert "cannot be read" in err


def test_a_worker_with_an_unusable_key_stops_at_start_up_with_one_line(tmp_path: Path) -> None:
    key_file = tmp_path / "short.pem"
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    keys = json.dumps([{"domain": DOMAIN, "selector": "s", "key_file": str(key_file)}])
    run = run_mailroom("worker", env={"MAILROOM_DKIM_KEYS": keys}, cwd=tmp_path)
    assert_usage_error(run, f"MAILROOM_DKIM_KEYS: s._domainkey.{DOMAIN}: key_file {key_file}")
    assert "not a key" not in run.stderr  # never the file's content
