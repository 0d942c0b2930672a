"""`mailroom status --json`: an address is in its own field only, never in reply texts."""

from __future__ import annotations

import json

import redis

from tests.support.status import record_one
from workers.model.reply import Code, Reply, Step
from workers.model.states import RecipientState
from workers.queue.status import StatusStore, iso_time

NOW = 1_700_000_000.0
REJECTED = Reply(
    Code.MAILBOX_UNAVAILABLE, "5.1.1", "<bob@example.org>: Recipient address rejected", Step.RCPT_TO
)


def test_reply_texts_in_the_view_keep_only_the_domain(redis_client: redis.Redis) -> None:
    store = StatusStore(redis_client, ttl=600)
    store.create("m1", "noreply@sender.test", {"bob@example.org": "example.org"}, NOW)
    attempt = {
        "at": iso_time(NOW),
        "destination": "example.org",
        "host": "mx.example.org",
        "address": "127.0.0.2",
        "steps": [
            {
                "step": "rcpt_to",
                "command": "RCPT TO",
                "code": 550,
                "enhanced": "5.1.1",
                "text": REJECTED.text,
                "ms": 1.0,
            },
        ],
    }
    record_one(
        store, "m1", {"bob@example.org": (RecipientState.BOUNCED, REJECTED)}, [attempt], None
    )

    view = store.view("m1")

    assert view is not None
    [recipient] = view["recipients"]
    assert recipient["address"] == "bob@example.org"
    assert recipient["reply"] == "<*@example.org>: Recipient address rejected"
    assert view["attempts"][0]["steps"][0]["text"] == "<*@example.org>: Recipient address rejected"
    without_own_field = {**view, "recipients": [{**recipient, "address": ""}]}
    assert "bob" not in json.dumps(without_own_field)
