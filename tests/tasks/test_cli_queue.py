"""`mailroom queue`, `queue flush` and `queue delete` on deferred deliveries that real deliveries
to a real SMTP sink (answering 450) and a failing DNS made; and `mailroom status` as an operator
reads it. The CLI runs in a subprocess against the deployment's real Redis."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from tests.support.smtp_sink import MakeSink
from tests.tasks.conftest import Deploy
from tests.tasks.pipeline_support import running_worker, wait_for, worker_env
from tests.tasks.test_cli import Run, run_mailroom
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DEFERRED_KEY, DeferredSet
from workers.queue.status import StatusStore


def notification(*to: str) -> dict[str, Any]:
    return {"sender": "app@example.test", "to": list(to), "subject": "Invoice 7", "text": "t"}


def view(client: redis.Redis, message_id: str) -> dict[str, Any]:
    record = StatusStore(client, ttl=60).view(message_id)
    assert record is not None
    return record


def deferred_due(client: redis.Redis) -> dict[str, float]:
    """Message id → due time, of every entry in the deferred set."""
    entries: list[tuple[bytes, float]] = client.zrange(DEFERRED_KEY, 0, -1, withscores=True)  # type: ignore[assignment]
    return {member.decode().split("|")[0]: score for member, score in entries}


def test_queue_lists_flushes_and_deletes_real_deferred_deliveries(
    redis_client: redis.Redis, mx_port: int, deploy: Deploy, make_sink: MakeSink, tmp_path: Path
) -> None:
    make_sink("127.0.0.5", port=mx_port)
    settings, app, mailroom = deploy(retry_delays="3600")
    two = mailroom.notify(**notification("450-a@implicit.test", "450-b@implicit.test"))
    one = mailroom.notify(**notification("450-c@implicit.test"))
    dns = mailroom.notify(**notification("x@tempfail.test"))  # SERVFAIL: 451 4.4.3
    with running_worker(app):
        wait_for(lambda: DeferredSet(redis_client).count() == 3, timeout=20)
    env = worker_env(settings)

    def mailroom_cli(*args: str) -> Run:
        return run_mailroom(*args, env=env, cwd=tmp_path)

    listed = mailroom_cli("queue", "--json")
    assert listed.status == 0, listed
    entries = json.loads(listed.stdout)
    assert [(e["message_id"], e["destination"], e["recipients"]) for e in entries] == [
        (two, "implicit.test", 2),
        (one, "implicit.test", 1),
        (dns, "tempfail.test", 1),
    ]  # oldest first
    first = entries[0]
    assert (first["attempts"], first["code"], first["enhanced"], first["reply"]) == (
        1,
        450,
        "4.2.1",
        "mailbox busy",
    )
    assert entries[2]["enhanced"] == "4.4.3"
    assert first["next_attempt"] > first["queued_at"]
    assert first["throttled"] is None
    only = mailroom_cli("queue", "--destination", "IMPLICIT.test", "--json")
    assert [e["message_id"] for e in json.loads(only.stdout)] == [two, one]
    assert json.loads(mailroom_cli("queue", "--older-than", "3600", "--json").stdout) == []

    human = mailroom_cli("queue")
    header, *rows, summary = human.stdout.splitlines()
    assert header.split() == [
        "MESSAGE", "DESTINATION", "RCPT", "TRIES", "AGE", "NEXT", "ATTEMPT", "LAST", "REPLY"
    ]  # fmt: skip
    assert rows[0].split()[:4] == [two, "implicit.test", "2", "1"]
    assert rows[0].endswith("450 4.2.1 mailbox busy")
    assert summary == "-- 3 deliveries deferred, 4 recipients"

    before = deferred_due(redis_client)
    flushed = mailroom_cli("queue", "flush", one)
    assert (flushed.status, flushed.stdout) == (0, "flushed 1 delivery: due now\n")
    after = deferred_due(redis_client)
    assert after[one] <= time.time() < before[one]
    assert after[two] == before[two]
    by_destination = mailroom_cli("queue", "flush", "--destination", "tempfail.test")
    assert by_destination.stdout == "flushed 1 delivery: due now\n"
    assert deferred_due(redis_client)[dns] <= time.time()
    unknown = mailroom_cli("queue", "flush", "f" * 32)
    assert unknown.status == 1
    assert unknown.stderr_lines == [
        f"mailroom: queue flush: message '{'f' * 32}' has no deferred delivery"
    ]
    both = mailroom_cli("queue", "flush", "--destination", "x.test", one)
    assert (both.status, len(both.stderr_lines)) == (2, 1)

    deleted = mailroom_cli("queue", "delete", two)
    assert (deleted.status, deleted.stdout) == (0, "deleted 1 delivery (2 recipients)\n")
    record = view(redis_client, two)
    assert record["state"] == "failed"
    for recipient in record["recipients"]:
        assert recipient["state"] == "deleted"
        assert recipient["deleted"].startswith("deleted by operator at ")
        assert (recipient["code"], recipient["reply"]) == (450, "mailbox busy")  # kept
        assert "next_attempt" not in recipient
    [dead] = DeadLetters(redis_client, ttl=60).show(two)
    assert (dead["reason"], len(dead["recipients"])) == ("deleted", 2)
    assert {r["reason"] for r in dead["recipients"]} == {"deleted"}
    assert dead["recipients"][0]["deleted"].startswith("deleted by operator at ")
    assert two not in deferred_due(redis_client)
    remaining = json.loads(mailroom_cli("queue", "--json").stdout)
    assert [e["message_id"] for e in remaining] == [one, dns]
    shown = mailroom_cli("status", two)
    assert "deleted by operator at " in shown.stdout
    again = mailroom_cli("queue", "delete", two, "e" * 32)
    assert again.status == 1
    assert again.stdout == "deleted 0 deliveries (0 recipients)\n"
    assert again.stderr_lines == [
        f"mailroom: queue delete: message '{two}' has nothing left to deliver",
        f"mailroom: queue delete: no message with id '{'e' * 32}'",
    ]
    # A delete is undone by a replay of its dead letter.
    replayed = mailroom_cli("dlq", "replay", two)
    assert (replayed.status, replayed.stdout) == (0, "replayed 1 delivery\n")
    back = view(redis_client, two)["recipients"]
    assert [(r["state"], "deleted" in r) for r in back] == [("queued", False)] * 2


def test_delete_races_running_workers_and_nothing_is_both_sent_and_deleted(
    redis_client: redis.Redis, mx_port: int, deploy: Deploy, make_sink: MakeSink, tmp_path: Path
) -> None:
    """A worker sends (each final dot answered after half a second, two messages a second by
    the rate limit) while `queue flush` and `queue delete` run: each message ends either
    delivered (the sink accepted it) or deleted (it did not), never both, and none is lost."""
    sink = make_sink("127.0.0.5", port=mx_port, slow_seconds=0.5)
    limits = '{"implicit.test": "2/s"}'
    settings, app, mailroom = deploy(rate_limits=limits)
    ids = [mailroom.notify(**notification("slow-data@implicit.test")) for _ in range(12)]
    env = worker_env(settings) | {"MAILROOM_RATE_LIMITS": limits}

    def settled() -> bool:
        states = {r["state"] for i in ids for r in view(redis_client, i)["recipients"]}
        return states <= {"delivered", "deleted"}

    with running_worker(app, concurrency=4):
        wait_for(lambda: len(sink.sessions) > 0)  # the first session is under way
        flushed = run_mailroom("queue", "flush", env=env, cwd=tmp_path)
        deleted = run_mailroom("queue", "delete", *ids, env=env, cwd=tmp_path)
        wait_for(settled, timeout=30)

    assert flushed.status == 0, flushed
    assert "Traceback" not in deleted.stderr
    busy = [line for line in deleted.stderr_lines if "being delivered right now" in line]
    done = [line for line in deleted.stderr_lines if "has nothing left to deliver" in line]
    assert deleted.status == (1 if busy or done else 0), deleted
    assert len(deleted.stderr_lines) == len(busy) + len(done)
    states = {i: view(redis_client, i)["recipients"][0]["state"] for i in ids}
    delivered = {i for i, state in states.items() if state == "delivered"}
    removed = {i for i, state in states.items() if state == "deleted"}
    accepted = [m.message_id for m in sink.messages if m.accepted]
    received = {str(m).strip("<>").partition("@")[0] for m in accepted}
    assert len(accepted) == len(received)  # each message sent once
    assert received == delivered  # what the sink accepted is recorded delivered, and only that
    assert delivered.isdisjoint(removed)
    assert delivered | removed == set(ids)
    assert len(delivered) >= len(busy) + len(done)
    assert delivered  # the first session was running when the delete came
    assert removed  # and the delete got the rest before the worker did
    dead = {e["message_id"] for e in DeadLetters(redis_client, ttl=60).list()}
    assert dead == removed


def test_status_reads_as_a_header_and_tables_with_rset_recipients_and_throttling(
    redis_client: redis.Redis, mx_port: int, deploy: Deploy, make_sink: MakeSink, tmp_path: Path
) -> None:
    make_sink("127.0.0.5", port=mx_port)
    make_sink("127.0.0.2", port=mx_port)
    settings, app, mailroom = deploy(rate_limits='{"mx.test": "1/h"}')
    env = worker_env(settings) | {"MAILROOM_RATE_LIMITS": '{"mx.test": "1/h"}'}
    with running_worker(app):
        first = mailroom.notify(**notification("ok@implicit.test"))
        wait_for(lambda: view(redis_client, first)["state"] == "delivered")
        reused = mailroom.notify(**notification("ok2@implicit.test", "450-x@implicit.test"))
        wait_for(lambda: view(redis_client, reused)["state"] == "in_progress")
        slot = mailroom.notify(**notification("ok@mx.test"))
        wait_for(lambda: view(redis_client, slot)["state"] == "delivered")
        held = mailroom.notify(**notification("ok2@mx.test"))
        wait_for(lambda: view(redis_client, held)["state"] == "in_progress")

    shown = run_mailroom("status", reused, env=env, cwd=tmp_path)
    assert shown.status == 0, shown
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"{reused}  in_progress  queued ")
    assert lines[1] == "subject: 'Invoice 7'"
    assert lines[3].split() == ["RECIPIENT", "DESTINATION", "STATE", "LAST", "REPLY"]
    deferred_row = next(line for line in lines if line.startswith("450-x@implicit.test"))
    assert "deferred 450 4.2.1 mailbox busy; next attempt " in " ".join(deferred_row.split())
    assert lines[7].startswith("attempt 1  ")
    assert lines[8].split() == ["STEP", "COMMAND", "REPLY", "MS", "TEXT"]
    steps = [line.split() for line in lines[9:]]
    names = [s[0] for s in steps]
    assert "RSET" in names  # the connection the first message left parked
    assert "open_session" not in names
    assert ["rcpt_to", "RCPT", "TO", "450-x@implicit.test", "450", "4.2.1"] in [
        s[:6] for s in steps
    ]
    assert ["rcpt_to", "RCPT", "TO", "ok2@implicit.test", "250", "2.1.5"] in [s[:6] for s in steps]
    as_json = json.loads(run_mailroom("status", reused, "--json", env=env, cwd=tmp_path).stdout)
    assert as_json["subject"] == "Invoice 7"
    assert {s.get("recipient") for s in as_json["attempts"][0]["steps"]} >= {
        "ok2@implicit.test",
        "450-x@implicit.test",
    }

    throttled = run_mailroom("status", held, env=env, cwd=tmp_path).stdout
    row = next(line for line in throttled.splitlines() if line.startswith("ok2@mx.test"))
    row = " ".join(row.split())
    assert "deferred 451 4.4.5 throttled by Mailroom: rate limit of mx.test" in row
    assert "; next attempt " in row
