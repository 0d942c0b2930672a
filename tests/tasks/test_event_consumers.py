"""Delivery events leaving Mailroom, against real servers: a webhook receiver on loopback that is
down, then fails, then recovers; the producer's own Celery app receiving the events task; and a
worker killed with kill -9 while it hands a batch over."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from tasks.cli.exporter_app import MailroomCollector
from tasks.cli.exporter_events import consumers
from tests.support.smtp_sink import MakeSink
from tests.support.webhook_receiver import WebhookReceiver
from tests.tasks.conftest import Deploy
from tests.tasks.pipeline_support import WorkerProcess, running_worker, wait_for, worker_env
from workers.events.dispatcher import DELIVERIES_KEY
from workers.queue.events import EVENTS_KEY

HOST = "127.0.0.71"
KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def notification(*to: str) -> dict[str, Any]:
    return {
        "sender": "app@example.test",
        "to": list(to),
        "subject": "Invoice 42",
        "text": "t",
        "tags": ["invoice"],
    }


def verify(headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: v1,base64(HMAC-SHA256(key, id.timestamp.body)), computed here."""
    lower = {k.lower(): v for k, v in headers.items()}
    signed = f"{lower['webhook-id']}.{lower['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    return lower["webhook-signature"] == f"v1,{expected}"


def test_a_webhook_that_is_down_then_fails_then_recovers_gets_every_event(
    redis_client: redis.Redis, mx_port: int, deploy: Deploy, make_sink: MakeSink
) -> None:
    make_sink("127.0.0.5", port=mx_port)
    port = free_port()
    url = f"http://{HOST}:{port}/hooks/mailroom?token=t0ken"
    hooks = [{"url": url, "secret": SECRET, "events": ["queued", "delivered", "bounced"]}]
    settings, app, mailroom = deploy(webhooks=hooks)
    receiver = WebhookReceiver(HOST, port, answers=[500])
    label = f"http://{HOST}:{port}/hooks/mailroom"  # the token never in metrics
    ids = mailroom.notify_many(
        [notification("a@implicit.test"), notification("550-gone@implicit.test")]
    )
    try:
        with running_worker(app):
            # Down: the first try is refused.
            wait_for(lambda: redis_client.hget(DELIVERIES_KEY, f"{label}|failed") == b"1")
            receiver.start()  # then up, answering 500 once, then 200
            wait_for(
                lambda: (
                    {(e["message_id"], e["type"]) for e in receiver.events()}
                    >= {(ids[0], "delivered"), (ids[1], "bounced")}
                ),
                timeout=30,
                what="every event",
            )
    finally:
        receiver.stop()
    # The worker's shutdown stopped its event consumers: none is left running.
    assert [t.name for t in threading.enumerate() if t.name.startswith("events ")] == []
    events = receiver.events()
    assert {(e["message_id"], e["recipient"], e["type"]) for e in events} == {
        (ids[0], "a@implicit.test", "queued"),
        (ids[0], "a@implicit.test", "delivered"),
        (ids[1], "550-gone@implicit.test", "queued"),
        (ids[1], "550-gone@implicit.test", "bounced"),
    }  # "deferred" and the others were not asked for
    assert all(e["tags"] == ["invoice"] for e in events)
    assert all(verify(r.headers, r.body) for r in receiver.received)
    assert receiver.requests >= len(receiver.received) + 1  # the 500 was retried
    by_id: dict[str, set[tuple[str, str]]] = {}
    for event in events:  # duplicates carry the same id and the same event
        by_id.setdefault(event["event_id"], set()).add((event["type"], event["recipient"]))
    assert all(len(same) == 1 for same in by_id.values())
    assert int(redis_client.hget(DELIVERIES_KEY, f"{label}|failed") or 0) >= 2
    assert int(redis_client.hget(DELIVERIES_KEY, f"{label}|ok") or 0) >= 1
    scraped = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in MailroomCollector(
            redis_client, settings.shards, consumers(settings)
        ).collect()
        for sample in family.samples
    }
    written = redis_client.xinfo_stream(EVENTS_KEY)["entries-added"]
    assert scraped[("mailroom_events_written_total", ())] == written >= 4
    ok = ("mailroom_event_deliveries_total", (("consumer", label), ("status", "ok")))
    assert scraped[ok] >= 1
    assert scraped[("mailroom_event_lag_seconds", (("consumer", label),))] == 0


def test_a_bad_webhook_setting_is_one_line_without_the_secret(deploy: Deploy) -> None:
    with pytest.raises(Exception, match="url must be http") as caught:
        deploy(webhooks=[{"url": "ftp://example.test/", "secret": "s3cr3t-value"}])
    assert "s3cr3t-value" not in str(caught.value)


@pytest.fixture
def producer_app(redis_server: Any) -> Iterator[tuple[Celery, list[list[dict[str, Any]]]]]:
    """The producer's own Celery app, with its events task, on Mailroom's broker."""
    app = Celery("producer", broker=redis_server.url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    batches: list[list[dict[str, Any]]] = []

    @app.task(name="producer.mail_events")
    def mail_events(events: list[dict[str, Any]]) -> None:
        batches.append(events)

    with start_worker(
        app, pool="threads", concurrency=1, perform_ping_check=False, queues=["producer.events"]
    ):
        yield app, batches


def test_the_events_task_in_the_producers_own_app_receives_the_batches(
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
    producer_app: tuple[Celery, list[list[dict[str, Any]]]],
) -> None:
    make_sink("127.0.0.5", port=mx_port)
    _app, batches = producer_app
    _settings, app, mailroom = deploy(
        events_task="producer.mail_events", events_queue="producer.events"
    )
    message_id = mailroom.notify(**notification("a@implicit.test"))
    with running_worker(app):
        wait_for(
            lambda: (
                ("delivered", message_id)
                in {(e["type"], e["message_id"]) for batch in batches for e in batch}
            ),
            timeout=30,
            what="the delivered event in the producer's task",
        )
    types = [e["type"] for batch in batches for e in batch if e["message_id"] == message_id]
    assert types == ["queued", "delivered"]


def test_a_worker_killed_while_it_hands_a_batch_over_loses_no_event(
    redis_client: redis.Redis, mx_port: int, deploy: Deploy, make_sink: MakeSink, tmp_path: Path
) -> None:
    make_sink("127.0.0.5", port=mx_port)
    port = free_port()
    hooks = [{"url": f"http://{HOST}:{port}/h", "secret": SECRET}]
    settings, _app, mailroom = deploy(webhooks=hooks)
    hold = threading.Event()
    ids = mailroom.notify_many([notification(f"u{n}@implicit.test") for n in range(5)])
    env = {
        **worker_env(settings),
        "MAILROOM_WEBHOOKS": json.dumps(hooks),
    }
    env["MAILROOM_EVENTS_CLAIM_TIMEOUT"] = "1"
    workers: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "tasks.cli", "worker", "--concurrency", "2"],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        workers.append(WorkerProcess(process, log))
        return workers[-1]

    with WebhookReceiver(HOST, port, hold=hold) as receiver:
        try:
            first = start("first")
            wait_for(lambda: receiver.requests >= 1, timeout=30, what="a POST in flight")
            first.kill()  # kill -9 while the endpoint holds the batch
            hold.set()  # from now on it answers at once
            start("second")
            wait_for(
                lambda: (
                    {e["message_id"] for e in receiver.events() if e["type"] == "delivered"}
                    == set(ids)
                ),
                timeout=90,
                what="every event after the kill",
            )
        finally:
            for worker in workers:
                worker.kill()
    queued = {e["message_id"] for e in receiver.events() if e["type"] == "queued"}
    assert queued == set(ids)
