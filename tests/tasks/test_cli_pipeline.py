"""`mailroom send`, `status`, `queues`, `dlq` and `worker` as an operator runs them.

The real CLI runs in a subprocess against a real redis-server; bad input must give one line on
stderr, exit status 2 and nothing enqueued (Redis stays empty).
"""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer
from tests.tasks.test_cli import Run, run_mailroom
from workers.model.reply import Reply, Step
from workers.queue.content import ContentStore
from workers.queue.dead_letters import DeadLetters


def env(server: RedisServer) -> dict[str, str]:
    return {"MAILROOM_REDIS_URL": server.url, "MAILROOM_SHARDS": "4"}


def send(server: RedisServer, tmp_path: Path, *args: str) -> Run:
    return run_mailroom("send", *args, env=env(server), cwd=tmp_path)


GOOD = ("--from", "app@example.test", "--to", "a@one.test", "--subject", "Hi", "--text", "body")


def test_send_prints_the_id_and_status_shows_it_queued(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    sent = send(redis_server, tmp_path, *GOOD, "--cc", "b@two.test", "--json")
    assert sent.status == 0, sent.stderr
    message_id = json.loads(sent.stdout)["id"]

    status = run_mailroom("status", message_id, "--json", env=env(redis_server), cwd=tmp_path)
    assert status.status == 0, status.stderr
    record = json.loads(status.stdout)
    assert record["id"] == message_id
    assert record["state"] == "queued"
    assert [(r["address"], r["destination"], r["state"]) for r in record["recipients"]] == [
        ("a@one.test", "one.test", "queued"),
        ("b@two.test", "two.test", "queued"),
    ]
    human = run_mailroom("status", message_id, env=env(redis_server), cwd=tmp_path)
    assert human.stdout.splitlines()[0].startswith(f"{message_id}  queued  queued ")
    assert human.stdout.splitlines()[1] == "subject: 'Hi'"

    queues = run_mailroom("queues", "--json", env=env(redis_server), cwd=tmp_path)
    depths = json.loads(queues.stdout)
    assert sum(depths["shards"].values()) >= 1
    assert set(depths["shards"]) == {f"mailroom.shard.{k}" for k in range(4)}
    assert (depths["intake"], depths["deferred"], depths["dead"], depths["suppressed"]) == (
        0,
        0,
        0,
        0,
    )


def test_send_reads_the_body_from_a_file(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    body = tmp_path / "body.txt"
    body.write_text("from a file\n", encoding="utf-8")
    args = ("--from", "app@example.test", "--to", "a@one.test", "--subject", "Hi")
    sent = send(redis_server, tmp_path, *args, "--text-file", str(body), "--header", "X-Job: 7")
    assert sent.status == 0, sent.stderr
    assert len(sent.stdout.strip()) == 32


def test_send_attaches_files_and_inline_parts(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    invoice = tmp_path / "Rechnung März.pdf"
    invoice.write_bytes(b"%PDF-1.7 " + bytes(range(256)))
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"\x89PNG")
    sent = send(
        redis_server,
        tmp_path,
        *GOOD,
        "--html",
        '<img src="cid:logo@example.test">',
        "--reply-to",
        "help@example.test",
        "--attach",
        str(invoice),
        "--attach-inline",
        f"logo@example.test={logo}",
    )
    assert sent.status == 0, sent.stderr
    stored = ContentStore(redis_client, ttl=60).get(sent.stdout.strip())
    assert stored is not None
    parsed = email.message_from_bytes(stored.data, policy=email.policy.default)
    assert parsed["Reply-To"] == "help@example.test"
    [attached] = parsed.iter_attachments()
    assert (attached.get_filename(), attached.get_content()) == (
        "Rechnung März.pdf",
        invoice.read_bytes(),
    )
    [image] = [part for part in parsed.walk() if part["Content-ID"] == "<logo@example.test>"]
    assert (image.get_content_type(), image.get_content()) == ("image/png", b"\x89PNG")


def test_an_inline_part_with_a_bad_content_id_names_the_option_and_key(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"\x89PNG")
    args = (*GOOD, "--html", "<p>x</p>", "--attach", str(logo), "--attach-inline", f"a b={logo}")
    sent = send(redis_server, tmp_path, *args)
    assert sent.status == 2
    assert sent.stderr_lines == [
        "mailroom: send: --attach-inline: content_id: 'a b' is not a valid Content-ID"
    ]
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--from", "app@example.test", "--subject", "Hi", "--text", "b"), ("recipient",)),
        (
            ("--from", "app@example.test", "--to", "bob@", "--subject", "Hi", "--text", "b"),
            ("send: --to: 'bob@'",),
        ),
        (
            ("--from", "nobody", "--to", "a@one.test", "--subject", "Hi", "--text", "b"),
            ("--from:",),
        ),
        ((*GOOD[:6], "--text", " \n\t"), ("send: --text: is empty or only whitespace",)),
        ((*GOOD, "--html", ""), ("send: --html: is empty",)),
        ((*GOOD[:6], "--subject", "a\nBcc: x@evil.test", "--text", "b"), ("subject",)),
        ((*GOOD, "--header", "no colon here"), ("--header",)),
        ((*GOOD, "--text-file", "/nonexistent"), ("not allowed with",)),
        ((*GOOD[:6], "--text-file", "/nonexistent/body.txt"), ("--text-file",)),
        (("--to", "a@one.test", "--subject", "Hi", "--text", "b"), ("--from",)),
        ((*GOOD, "--bogus"), ("--bogus",)),
        ((*GOOD, "--reply-to", "help@"), ("send: --reply-to: 'help@' is not a valid",)),
        ((*GOOD, "--attach", "/nonexistent/a.pdf"), ("send: --attach: cannot read",)),
        ((*GOOD, "--attach", "/dev/null"), ("send: --attach: '/dev/null' is not a regular",)),
        ((*GOOD, "--attach", "/"), ("send: --attach: ",)),
        ((*GOOD, "--attach-inline", "logo.png"), ("send: --attach-inline: 'logo.png' is not",)),
        (
            (*GOOD, "--html", "<p>x</p>", "--attach-inline", "a b=/nonexistent"),
            ("send: --attach-inline: cannot read",),
        ),
    ],
)
def test_bad_send_input_is_one_line_exit_2_and_nothing_enqueued(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    tmp_path: Path,
    args: tuple[str, ...],
    words: tuple[str, ...],
) -> None:
    sent = send(redis_server, tmp_path, *args)

    assert sent.status == 2
    assert sent.stdout == ""
    [line] = sent.stderr_lines
    assert line.startswith("mailroom: ")
    for word in words:
        assert word in line
    assert redis_client.dbsize() == 0


def test_status_of_an_unknown_id_is_one_line_exit_1(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    assert send(redis_server, tmp_path, *GOOD).status == 0  # this Redis holds Mailroom data

    run = run_mailroom("status", "0" * 32, env=env(redis_server), cwd=tmp_path)

    assert run.status == 1
    [line] = run.stderr_lines
    assert line == f"mailroom: status: no message with id '{'0' * 32}'"


def test_a_redis_without_mailroom_data_is_named_rather_than_the_id(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    redis_client.set("someone-else", "x")

    run = run_mailroom("status", "0" * 32, env=env(redis_server), cwd=tmp_path)

    assert run.status == 1
    [line] = run.stderr_lines
    assert line == (
        f"mailroom: no Mailroom data in {redis_server.url}: is MAILROOM_REDIS_URL right?"
    )


def test_dlq_list_show_and_purge(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    dead = DeadLetters(redis_client, ttl=3600)
    reply = Reply(550, "5.1.1", "unknown user", Step.RCPT_TO)
    recipient = {"address": "x@one.test", "code": 550, "enhanced": "5.1.1", "reply": reply.text}
    dead.add("a" * 32, "one.test", "bounced", [recipient], now=1_000_000.0)

    listed = run_mailroom("dlq", "list", "--json", env=env(redis_server), cwd=tmp_path)
    [entry] = json.loads(listed.stdout)
    assert (entry["message_id"], entry["destination"], entry["reason"]) == (
        "a" * 32,
        "one.test",
        "bounced",
    )
    assert entry["recipients"][0]["address"] == "x@one.test"
    assert entry["at"].startswith("1970-01-12T13:46:40")
    shown = run_mailroom("dlq", "show", "a" * 32, "--json", env=env(redis_server), cwd=tmp_path)
    assert json.loads(shown.stdout)[0]["reason"] == "bounced"
    human = run_mailroom("dlq", "show", "a" * 32, env=env(redis_server), cwd=tmp_path)
    assert human.stdout.split() == [
        "1970-01-12T13:46:40.000+00:00",
        "a" * 32,
        "one.test",
        "bounced",
        "1",
        "recipient",
        "550",
        "5.1.1",
        "unknown",
        "user",
    ]
    missing = run_mailroom("dlq", "show", "b" * 32, env=env(redis_server), cwd=tmp_path)
    assert missing.status == 1
    assert len(missing.stderr_lines) == 1
    neither = run_mailroom("dlq", "purge", env=env(redis_server), cwd=tmp_path)
    assert neither.status == 2
    assert len(neither.stderr_lines) == 1
    purged = run_mailroom("dlq", "purge", "--all", env=env(redis_server), cwd=tmp_path)
    assert purged.stdout.strip() == "purged 1 dead letter"
    assert dead.count() == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--shards", "9"), ("9", "4")),
        (("--shards", "x"), ("'x'",)),
        (("--concurrency", "0"), ("--concurrency",)),
    ],
)
def test_bad_worker_options_are_one_line(
    redis_server: RedisServer, tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    run = run_mailroom("worker", *args, env=env(redis_server), cwd=tmp_path)
    assert run.status == 2
    [line] = run.stderr_lines
    for word in words:
        assert word in line


def test_replaying_many_dead_letters_reports_progress(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    dead = DeadLetters(redis_client, ttl=3600)
    recipient = {"address": "x@one.test", "code": 550, "enhanced": "5.1.1", "reply": "unknown"}
    for n in range(450):
        dead.add(f"{n:032x}", "one.test", "bounced", [recipient], now=1_000_000.0 + n)

    run = run_mailroom("dlq", "replay", "--all", env=env(redis_server), cwd=tmp_path)

    assert run.status == 0, run.stderr
    assert run.stderr_lines == [
        "dlq replay: 200/450 messages, 0 deliveries",
        "dlq replay: 400/450 messages, 0 deliveries",
        "dlq replay: 450/450 messages, 0 deliveries",
    ]
    assert run.stdout.strip() == "replayed 0 deliveries"  # no status records: nothing to requeue
    assert dead.count() == 0
