"""Every `mailroom` command's failures are one line with a documented exit status, never a
traceback; `--verbose` names the Redis; `--version`; help text on every command and option.

The CLI runs in a subprocess; "Redis down" is a loopback port that refuses connections.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import redis

from tasks.cli import build_parser
from tests.support.raw_servers import MakeRefusedPort
from tests.support.redis_server import RedisServer
from tests.tasks.test_cli import run_mailroom
from tests.tasks.test_cli_pipeline import GOOD, env
from workers.queue.deferred import DeferredSet

ID = "0" * 32

# Every command that talks to Redis, as an operator would type it.
REDIS_COMMANDS = [
    ("send", *GOOD),
    ("status", ID),
    ("status", ID, "--json"),
    ("queues",),
    ("queue",),
    ("queue", "--json"),
    ("queue", "flush"),
    ("queue", "flush", ID),
    ("queue", "delete", ID),
    ("dlq", "list"),
    ("dlq", "show", ID),
    ("dlq", "replay", ID),
    ("dlq", "purge", "--all"),
]


@pytest.mark.parametrize("args", REDIS_COMMANDS, ids=lambda args: " ".join(args[:3]))
def test_redis_down_is_one_line_and_exit_3(
    tmp_path: Path, make_refused_port: MakeRefusedPort, args: tuple[str, ...]
) -> None:
    port = make_refused_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"

    run = run_mailroom(
        *args, env={"MAILROOM_REDIS_URL": url, "MAILROOM_REDIS_TIMEOUT": "1"}, cwd=tmp_path
    )

    assert run.status == 3, run
    assert run.stdout == ""
    [line] = run.stderr_lines
    assert line.startswith(
        f"mailroom: {args[0]}: Redis unavailable at redis://:***@127.0.0.1:{port}/0: "
    )
    assert "hunter2" not in run.stderr
    assert "Traceback" not in run.stderr


def test_verbose_names_the_redis_with_its_password_redacted(
    tmp_path: Path, make_refused_port: MakeRefusedPort
) -> None:
    port = make_refused_port()
    environment = {"MAILROOM_REDIS_URL": f"redis://app:hunter2@127.0.0.1:{port}/3"}

    for command, args in (
        ("queues", ("queues", "--verbose")),
        ("queues", ("-v", "queues")),
        ("dlq", ("dlq", "list", "-v")),
        ("status", ("status", ID, "-v")),
    ):
        run = run_mailroom(*args, env=environment, cwd=tmp_path)

        assert run.status == 3, run
        first, second = run.stderr_lines
        assert first == f"mailroom: using Redis redis://app:***@127.0.0.1:{port}/3 (timeout 10 s)"
        assert second.startswith(f"mailroom: {command}: Redis unavailable at redis://app:***@")
        assert "hunter2" not in run.stderr


def test_verbose_on_a_working_redis_prints_the_url_and_runs(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = run_mailroom("queue", "--verbose", env=env(redis_server), cwd=tmp_path)

    assert run.status == 0, run
    assert run.stderr_lines == [f"mailroom: using Redis {redis_server.url} (timeout 10 s)"]
    assert run.stdout == "the queue is empty\n"


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    run = run_mailroom("--version", cwd=tmp_path)

    assert run.status == 0
    assert run.stdout.startswith("mailroom 0.")
    assert run.stdout.count("\n") == 1


def _parsers(
    parser: argparse.ArgumentParser, path: str
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def test_every_command_and_option_has_help_text() -> None:
    missing = []
    parsers = _parsers(build_parser(), "mailroom")
    for path, parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest: choice.help for choice in action._choices_actions}
                missing += [f"{path} {name}" for name in action.choices if not listed.get(name)]
            elif not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert len(parsers) > 15  # the walk reached the command groups' actions
    assert missing == []


def test_dlq_replay_and_purge_of_an_unknown_id_exit_1(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    redis_client.set("mailroom:deferred-marker", "1")  # Mailroom data, so the id is what is wrong

    for action in ("replay", "purge"):
        run = run_mailroom("dlq", action, ID, env=env(redis_server), cwd=tmp_path)

        assert run.status == 1, run
        assert run.stdout in ("replayed 0 deliveries\n", "purged 0 dead letters\n")
        assert run.stderr_lines == [f"mailroom: dlq {action}: no dead letter for message '{ID}'"]


def test_a_long_flush_reports_progress_on_stderr(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    deferred = DeferredSet(redis_client)
    for n in range(1200):
        deferred.defer(f"{n:032x}", "x.test", 2, 4_000_000_000.0)

    run = run_mailroom("queue", "flush", env=env(redis_server), cwd=tmp_path)

    assert (run.status, run.stdout) == (0, "flushed 1200 deliveries: due now\n")
    assert len(run.stderr_lines) >= 2  # a line per page of about 500
    assert all(line.startswith("queue flush: ") for line in run.stderr_lines)
    assert run.stderr_lines[-1] == "queue flush: 1200/1200"
    latest = redis_client.zrange("mailroom:deferred", -1, -1, withscores=True)
    assert float(latest[0][1]) < 4_000_000_000.0
