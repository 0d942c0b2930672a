"""The suppression list end to end: producer → Redis → a real Celery worker → SMTP sink.

A hard bounce lists the address with the reply that caused it; the next message to it is
recorded `suppressed` without a connection; the other recipients of a message go out as usual.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from tests.support.smtp_sink import MakeSink
from tests.tasks.conftest import Deploy
from tests.tasks.pipeline_support import running_worker, wait_for
from workers.observe.metrics import DELIVERIES_KEY
from workers.queue.status import StatusStore
from workers.queue.suppression import Entry, SuppressionList


def notification(*to: str) -> dict[str, Any]:
    return {"sender": "app@example.test", "to": list(to), "subject": "Invoice 7", "text": "t"}


def view(client: redis.Redis, message_id: str) -> dict[str, Any]:
    record = StatusStore(client, ttl=60).view(message_id)
    assert record is not None
    return record


def recipients(client: redis.Redis, message_id: str) -> dict[str, dict[str, Any]]:
    return {r["address"]: r for r in view(client, message_id)["recipients"]}


def finished(client: redis.Redis, message_id: str) -> bool:
    return view(client, message_id)["state"] in {"delivered", "partially_delivered", "failed"}


def test_a_hard_bounce_lists_the_address_and_the_next_message_opens_no_connection(
    redis_client: redis.Redis, mx_port: int, deploy: Deploy, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, mailroom = deploy(suppression_ttl="30")
    first = mailroom.notify(**notification("550-gone@implicit.test", "553-bad@implicit.test"))
    with running_worker(app):
        wait_for(lambda: finished(redis_client, first), what="the bounces")
        sessions = len(sink.sessions)
        listing = SuppressionList(redis_client)
        entry = listing.get("550-gone@implicit.test", time.time())
        assert entry is not None
        assert (entry.source, entry.reason, entry.message_id) == (
            "bounce",
            "550 5.1.1 unknown user",
            first,
        )
        assert entry.expires is not None
        assert 29.9 * 86400 < entry.expires - entry.since <= 30 * 86400
        # 553 5.1.3 (bad address syntax) is on the table too; 554 5.7.1 at DATA would not be.
        assert listing.get("553-bad@implicit.test", time.time()) is not None

        second = mailroom.notify(**notification("550-gone@implicit.test"))
        wait_for(lambda: finished(redis_client, second), what="the suppressed message")
    assert len(sink.sessions) == sessions  # no connection for it
    record = view(redis_client, second)
    assert record["state"] == "failed"
    [gone] = record["recipients"]
    assert gone["state"] == "suppressed"
    assert gone["code"] == 550
    assert gone["enhanced"] == "5.1.1"
    assert "on the suppression list since" in gone["reply"]
    assert "(bounce): 550 5.1.1 unknown user" in gone["reply"]
    assert record["attempts"] == []  # no attempt was made
    assert redis_client.hget(DELIVERIES_KEY, "suppressed|implicit.test") == b"1"


def test_the_other_recipients_of_a_message_go_out_as_usual(
    redis_client: redis.Redis, mx_port: int, deploy: Deploy, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, mailroom = deploy()
    now = time.time()
    SuppressionList(redis_client).add(
        [
            Entry("ZOE@implicit.test", "asked to stop", "operator", now),  # case folded
            Entry("old@implicit.test", "gone", "bounce", now - 100, expires=now - 1),
        ]
    )
    message_id = mailroom.notify(
        **notification("zoe@implicit.test", "max@implicit.test", "old@implicit.test")
    )
    with running_worker(app):
        wait_for(lambda: finished(redis_client, message_id), what="the delivery")
    [received] = sink.messages
    assert sorted(received.rcpt_tos) == ["max@implicit.test", "old@implicit.test"]
    states = recipients(redis_client, message_id)
    assert {a: r["state"] for a, r in states.items()} == {
        "zoe@implicit.test": "suppressed",
        "max@implicit.test": "delivered",
        "old@implicit.test": "delivered",  # its entry expired
    }
    assert "(operator): asked to stop" in states["zoe@implicit.test"]["reply"]
    assert view(redis_client, message_id)["state"] == "partially_delivered"
