"""The queue pipeline end to end: producer → Redis → a real Celery worker → SMTP sink.

Real redis-server (tests/support/redis_server.py), real dnsmasq serving the test zone
(implicit.test → 127.0.0.5, mx.test → 127.0.0.2/.3/.4, missing.test → NXDOMAIN), aiosmtpd sinks
scripted by recipient, and Celery's embedded worker on the threads pool.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
from typing import Any

import redis

from tasks.routing import shard_of, shard_queue
from tests.support.smtp_sink import MakeSink
from tests.tasks.conftest import Deploy
from tests.tasks.pipeline_support import (
    SHARDS,
    queued_task_bodies,
    running_worker,
    wait_for,
)
from workers.queue.status import StatusStore


def fields(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "sender": "Billing <billing@example.test>",
        "to": ["Zoë <zoe@implicit.test>"],
        "subject": "Your invoice",
        "text": "Hello Zoë",
    }
    values.update(overrides)
    return values


def state_of(client: redis.Redis, message_id: str) -> str | None:
    view = StatusStore(client, ttl=60).view(message_id)
    return None if view is None else str(view["state"])


def test_notify_is_delivered_by_a_worker_and_recorded(
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, mailroom = deploy()
    message_id = mailroom.notify(**fields(bcc=["audit@implicit.test"]))

    with running_worker(app):
        wait_for(lambda: state_of(redis_client, message_id) == "delivered", what="delivery")

    [received] = sink.messages
    assert sorted(received.rcpt_tos) == ["audit@implicit.test", "zoe@implicit.test"]
    assert received.message_id == f"<{message_id}@example.test>"
    assert b"audit@" not in received.content  # Bcc never in the headers
    view = StatusStore(redis_client, ttl=60).view(message_id)
    assert view is not None
    assert {r["address"]: r["state"] for r in view["recipients"]} == {
        "audit@implicit.test": "delivered",
        "zoe@implicit.test": "delivered",
    }
    [attempt] = view["attempts"]
    assert attempt["host"] == "implicit.test"
    assert [s["step"] for s in attempt["steps"]][:2] == ["resolve_mx", "open_session"]
    # The connection is parked for the next message (connection reuse), so no QUIT yet.
    assert attempt["steps"][-1]["step"] == "data"
    assert attempt["steps"][-1]["code"] == 250


def test_delivery_tasks_carry_ids_only(redis_client: redis.Redis, deploy: Deploy) -> None:
    _settings, _app, mailroom = deploy()
    message_id = mailroom.notify(
        **fields(
            to=["zoe@implicit.test", "max@mx.test"], subject="Secret salary", text="s3cret body"
        )
    )

    items: list[list[Any]] = []
    for destination in ("implicit.test", "mx.test"):
        queue = shard_queue(shard_of(destination, SHARDS))
        raw = b"".join(redis_client.lrange(queue, 0, -1))  # type: ignore[arg-type]
        # Celery's own "origin" header is pid@host; no address, subject or body may appear.
        for forbidden in (b"zoe@", b"max@", b"billing@", b"Secret", b"s3cret", b"Billing"):
            assert forbidden not in raw, (queue, forbidden)
        for message in queued_task_bodies(redis_client, queue):
            args, kwargs, _ = message["decoded_body"]
            assert kwargs == {}
            items.extend(item for item in args[0] if item[1] == destination)
    assert sorted(map(tuple, items)) == [
        (message_id, "implicit.test", 1),
        (message_id, "mx.test", 1),
    ]


def test_same_idempotency_key_returns_the_same_id_and_sends_once(
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, mailroom = deploy()
    first = mailroom.notify(**fields(idempotency_key="invoice-1"))
    second = mailroom.notify(**fields(idempotency_key="invoice-1", subject="changed"))
    third = mailroom.notify(**fields(idempotency_key="invoice-2"))

    assert first == second != third
    with running_worker(app):
        wait_for(lambda: len(sink.messages) == 2, what="two messages")
        wait_for(lambda: state_of(redis_client, third) == "delivered")
    assert sorted(m.message_id or "" for m in sink.messages) == sorted(
        f"<{i}@example.test>" for i in (first, third)
    )


def test_notify_many_puts_many_deliveries_in_one_task(
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, mailroom = deploy()
    batch = [fields(subject=f"n{i}", to=[f"user{i}@implicit.test"]) for i in range(30)]
    ids = mailroom.notify_many(batch)

    assert len(set(ids)) == 30
    queue = shard_queue(shard_of("implicit.test", SHARDS))
    [task] = queued_task_bodies(redis_client, queue)
    assert [item[0] for item in task["decoded_body"][0][0]] == ids
    with running_worker(app):
        wait_for(lambda: len(sink.messages) == 30, what="30 messages")
    subjects = sorted(str(m.headers()["Subject"]) for m in sink.messages)
    assert subjects == sorted(f"n{i}" for i in range(30))


def test_intake_task_takes_json_keyword_arguments(
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, _mailroom = deploy()
    app.send_task("mailroom.notify", kwargs=fields(), queue="mailroom.intake")

    with running_worker(app):
        wait_for(lambda: len(sink.messages) == 1, what="the intake's message")
    [message] = sink.messages
    assert json.dumps(str(message.headers()["Subject"])) == '"Your invoice"'


def test_attachments_by_api_and_by_task_reach_the_sink_byte_for_byte(
    redis_client: redis.Redis,
    mx_port: int,
    deploy: Deploy,
    make_sink: MakeSink,
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, mailroom = deploy()
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 8
    mailroom.notify(
        **fields(
            subject="by api",
            html='<p>Hi <img src="cid:logo@example.test"></p>',
            reply_to=["Accounts <accounts@example.test>"],
            attachments=[
                {"filename": "Rechnung März.pdf", "content": pdf},
                {"filename": "logo.png", "content": b"\x89PNG", "inline": True}
                | {"content_id": "logo@example.test"},
            ],
        )
    )
    encoded = base64.b64encode(pdf).decode("ascii")
    task_attachments = [{"filename": "invoice.pdf", "content_b64": encoded}]
    app.send_task(
        "mailroom.notify",
        kwargs=fields(subject="by task", attachments=task_attachments),
        queue="mailroom.intake",
    )

    with running_worker(app):
        wait_for(lambda: len(sink.messages) == 2, what="both messages")
    received = {
        str(parsed["Subject"]): parsed
        for parsed in (
            email.message_from_bytes(m.content, policy=email.policy.default) for m in sink.messages
        )
    }
    assert set(received) == {"by api", "by task"}
    by_api = received["by api"]
    assert by_api["Reply-To"].addresses[0].addr_spec == "accounts@example.test"
    [attached] = by_api.iter_attachments()
    assert (attached.get_filename(), attached.get_content()) == ("Rechnung März.pdf", pdf)
    [image] = [p for p in by_api.walk() if p["Content-ID"] == "<logo@example.test>"]
    assert image.get_content() == b"\x89PNG"
    [from_task] = received["by task"].iter_attachments()
    assert (from_task.get_filename(), from_task.get_content_type()) == (
        "invoice.pdf",
        "application/pdf",
    )
    assert from_task.get_content() == pdf


def test_the_intake_task_refuses_bad_content_b64_and_stores_nothing(
    redis_client: redis.Redis, deploy: Deploy
) -> None:
    _settings, app, _mailroom = deploy()
    notify = app.tasks["mailroom.notify"]
    bad = [{"filename": "invoice.pdf", "content_b64": "%%%"}]
    path = ["/etc/passwd"]
    assert notify.run(**fields(attachments=bad)) == (
        "invalid: attachments[0].content_b64: is not valid base64"
    )
    assert notify.run(**fields(attachments=path)) == (
        "invalid: attachments[0]: must be an object with content_b64"
    )
    assert redis_client.dbsize() == 0
