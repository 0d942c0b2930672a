"""`mailroom suppression list|add|remove|import|export` as an operator runs it, against the
deployment's real Redis, in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import pytest
import redis

from tests.support.redis_server import RedisServer
from tests.tasks.test_cli import Run, assert_usage_error, run_mailroom
from workers.queue.suppression import KEY


class Cli(Protocol):
    def __call__(self, *args: str, ttl: str = "") -> Run: ...


@pytest.fixture
def cli(redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path) -> Cli:
    redis_client.flushdb()

    def run(*args: str, ttl: str = "") -> Run:
        env = {"MAILROOM_REDIS_URL": redis_server.url, "MAILROOM_SUPPRESSION_TTL": ttl}
        return run_mailroom("suppression", *args, env=env, cwd=tmp_path)

    return run


def test_add_list_remove(cli: Cli, redis_client: redis.Redis) -> None:
    added = cli("add", "Zoe@Example.TEST", "max@example.test", "--reason", "asked to stop")
    assert added.status == 0, added
    assert added.stdout == "listed 2 addresses\n"
    assert sorted(redis_client.hkeys(KEY)) == [b"max@example.test", b"zoe@example.test"]

    listed = cli("list", "--json")
    entries = {e["address"]: e for e in json.loads(listed.stdout)}
    assert set(entries) == {"Zoe@example.test", "max@example.test"}  # the domain lower-cased
    assert entries["max@example.test"]["reason"] == "asked to stop"
    assert entries["max@example.test"]["source"] == "operator"
    assert entries["max@example.test"]["expires"] is None

    table = cli("list").stdout.splitlines()
    assert table[0].split() == ["ADDRESS", "SINCE", "SOURCE", "EXPIRES", "REASON"]
    assert table[1].split()[2:] == ["operator", "never", "asked", "to", "stop"]

    removed = cli("remove", "zoe@example.test", "nobody@example.test")
    assert removed.status == 1
    assert removed.stdout == "removed 1 address\n"
    assert removed.stderr_lines == ["mailroom: nobody@example.test is not on the list"]
    assert redis_client.hkeys(KEY) == [b"max@example.test"]


def test_entries_expire_after_suppression_ttl_days(cli: Cli) -> None:
    assert cli("add", "a@example.test", ttl="7").status == 0
    [entry] = json.loads(cli("list", "--json").stdout)
    assert entry["expires"] is not None
    assert entry["expires"] > entry["since"]


def test_import_then_export_round_trips(
    cli: Cli, tmp_path: Path, redis_client: redis.Redis
) -> None:
    source = tmp_path / "list.txt"
    source.write_text(
        "# from the old system\n"
        "a@example.test\n"
        '"b@example.test","hard bounce, 2025"\n'
        '{"address": "c@example.test", "reason": "complained"}\n'
        "\n"
    )
    imported = cli("import", str(source))
    assert imported.status == 0, imported
    assert imported.stdout == "listed 3 addresses\n"

    exported = cli("export")
    assert exported.stderr_lines == ["exported 3 addresses"]
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert {(e["address"], e["reason"], e["source"]) for e in lines} == {
        ("a@example.test", "imported", "import"),
        ("b@example.test", "hard bounce, 2025", "import"),
        ("c@example.test", "complained", "import"),
    }

    redis_client.delete(KEY)
    dump = tmp_path / "dump.jsonl"
    dump.write_text(exported.stdout)
    assert cli("import", str(dump)).status == 0
    assert sorted(redis_client.hkeys(KEY)) == [
        b"a@example.test",
        b"b@example.test",
        b"c@example.test",
    ]
    refused = cli("export", str(dump))  # never overwrites a file
    assert_usage_error(refused, "dump.jsonl")


def test_bad_input_lists_nothing(cli: Cli, tmp_path: Path, redis_client: redis.Redis) -> None:
    assert_usage_error(cli("add", "good@example.test", "not-an-address"), "address 2")
    source = tmp_path / "list.txt"
    source.write_text("a@example.test\nb@example.test,ok\nc@exa mple.test\n")
    assert_usage_error(cli("import", str(source)), "line 3")
    source.write_text("a@example.test\n\x1b[31m@example.test\n")
    assert_usage_error(cli("import", str(source)), "line 2")
    assert_usage_error(cli("import", str(tmp_path / "missing.txt")), "missing.txt")
    assert_usage_error(cli("add", "Zoe <zoe@example.test>"), "bare address")
    assert redis_client.exists(KEY) == 0
