"""Delivery events end to end: producer → Redis → a real Celery worker → SMTP sink, and the
events each recipient's state changes wrote, read back from the stream and through
`mailroom events`."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from tests.support.smtp_sink import MakeSink
from tests.tasks.conftest import Deploy
from tests.tasks.pipeline_support import running_worker, wait_for, worker_env
from tests.tasks.test_cli import run_mailroom
from workers.queue.events import EVENTS_KEY, EventLog
from workers.queue.status import StatusStore

TAGS = ["invoice", "eu"]
METADATA = {"invoice_id": "42", "tenant": "Zoë GmbH"}


def notification(*to: str) -> dict[str, Any]:
    return {
        "sender": "app@example.test",
        "to": list(to),
        "subject": "Invoice 42",
        "text": "t",
        "tags": TAGS,
        "metadata": METADATA,
    }


def states(client: redis.Redis, message_id: str) -> dict[str, str]:
    view = StatusStore(client, ttl=60).view(message_id)
    assert view is not None
    return {r["address"]: r["state"] for r in view["recipients"]}


def by_recipient(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        found[event["recipient"]].append(event)
    return found


def test_every_outcome_writes_its_events_in_order_with_tags_and_metadata(
    redis_client: redis.Redis, mx_port: int, deploy: Deploy, make_sink: MakeSink, tmp_path: Path
) -> None:
    make_sink("127.0.0.5", port=mx_port)
    settings, app, mailroom = deploy(retry_delays="3600")
    ok, gone, later = "ok@implicit.test", "550-gone@implicit.test", "451-later@implicit.test"
    first = mailroom.notify(**notification(ok, gone, later))
    with running_worker(app):
        wait_for(
            lambda: (
                states(redis_client, first) == {ok: "delivered", gone: "bounced", later: "deferred"}
            ),
            what="the three outcomes",
        )
        second = mailroom.notify(**notification(gone))  # listed by the bounce: suppressed
        wait_for(lambda: states(redis_client, second) == {gone: "suppressed"}, what="suppression")

    events = EventLog(redis_client).page("0-0", 100)
    assert len({e["event_id"] for e in events}) == len(events) == 8
    assert all(e["tags"] == TAGS and e["metadata"] == METADATA for e in events)
    assert all(e["timestamp"].endswith("+00:00") for e in events)
    mine = by_recipient([e for e in events if e["message_id"] == first])
    assert [e["type"] for e in mine[ok]] == ["queued", "delivered"]
    assert [e["type"] for e in mine[gone]] == ["queued", "bounced"]
    assert [e["type"] for e in mine[later]] == ["queued", "deferred"]
    delivered = mine[ok][1]
    assert delivered["reply"]["code"] == 250
    assert (delivered["step"], delivered["mx_host"], delivered["attempt"]) == (
        "data",
        "implicit.test",
        1,
    )
    assert isinstance(delivered["tls"], bool)
    assert delivered["destination"] == "implicit.test"
    bounced = mine[gone][1]
    assert (bounced["reply"]["code"], bounced["reply"]["enhanced"], bounced["step"]) == (
        550,
        "5.1.1",
        "rcpt_to",
    )
    assert mine[later][1]["reply"]["text"] == "greylisted"
    queued = mine[ok][0]
    assert queued["reply"] == {"code": None, "enhanced": "", "text": ""}
    assert (queued["step"], queued["mx_host"], queued["tls"]) == (None, None, None)
    [suppressed] = [e for e in events if e["message_id"] == second and e["type"] != "queued"]
    assert suppressed["type"] == "suppressed"
    assert "on the suppression list since" in suppressed["reply"]["text"]

    # Replaying the bounce writes `replayed`; `mailroom events` reads the same log.
    assert mailroom.replay([first]) == 1
    env = worker_env(settings)
    listed = run_mailroom("events", "--json", "--type", "replayed,bounced", env=env, cwd=tmp_path)
    assert listed.status == 0, listed
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["type"], e["recipient"]) for e in lines] == [("bounced", gone), ("replayed", gone)]
    after = run_mailroom("events", "--since", lines[0]["event_id"], env=env, cwd=tmp_path)
    assert after.status == 0, after
    later_lines = after.stdout.splitlines()  # only what came after the bounce
    types = [line.split("  ")[1] for line in later_lines]
    assert "bounced" not in types
    assert types[-3:] == ["queued", "suppressed", "replayed"]
    assert f"  replayed  {first}  {gone}  implicit.test" in later_lines[-1]
    human = run_mailroom("events", "--limit", "2", env=env, cwd=tmp_path)
    assert len(human.stdout.splitlines()) == 2
    assert "  queued  " in human.stdout.splitlines()[0]


def test_events_refuses_bad_input_in_one_line(deploy: Deploy, tmp_path: Path) -> None:
    settings, _app, _mailroom = deploy()
    env = worker_env(settings)
    for args, words in (
        (["--type", "sent"], "unknown 'sent'"),
        (["--since", "yesterday"], "neither an event id nor an ISO-8601 time"),
        (["--since", "2026-12-06T10:00:00"], "give the time zone"),
    ):
        run = run_mailroom("events", *args, env=env, cwd=tmp_path)
        assert run.status == 2, run
        assert run.stdout == ""
        [line] = run.stderr.splitlines()
        assert words in line


def test_events_maxlen_zero_writes_none_and_a_cap_trims(
    redis_client: redis.Redis, deploy: Deploy
) -> None:
    _settings, _app, mailroom = deploy(events_maxlen=0)
    mailroom.notify_many([notification("a@implicit.test")] * 3)
    assert redis_client.exists(EVENTS_KEY) == 0

    _settings, _app, mailroom = deploy(events_maxlen=10)
    mailroom.notify_many([notification("a@implicit.test", "b@implicit.test")] * 500)
    # MAXLEN ~ trims whole listpack nodes: about the cap, never the 1,000 written.
    assert 10 <= redis_client.xlen(EVENTS_KEY) < 300
