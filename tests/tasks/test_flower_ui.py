"""Flower as an operator sees it, in a real browser: delivery outcomes, task args, shard queues.

The stack is real: a redis-server of the test's own, the session's dnsmasq, aiosmtpd sinks on
127.0.0.5 (implicit.test, scripted by local part) and 127.0.0.9 (bücher.test, whose MAIL FROM
reply quotes the sender's address), `mailroom flower` and `mailroom worker` as subprocesses
configured only by MAILROOM_* variables. Pages are read by headless Chromium after their
scripts ran (the tasks table fills over XHR), and screenshots are kept under
var/test-artifacts/ for a person to look at.

Flower learns of tasks only from the events it receives while it listens, so the mail is sent
once Flower's event receiver is subscribed (a pattern subscription on this test's Redis), and
before the worker starts, so the broker page shows it waiting on its shard queue.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tasks.api import Mailroom
from tasks.flower_broker import DEAD_ROW, DEFERRED_ROW
from tasks.routing import INTAKE_QUEUE, all_shard_queues, shard_of
from tasks.worker_app import delivery_result
from tests.support.browser import Table, render, tables
from tests.support.dns_server import DnsServer
from tests.support.redis_server import RedisServerFactory
from tests.support.smtp_sink import MakeSink
from tests.tasks.pipeline_support import (
    REPO,
    SHARDS,
    WorkerProcess,
    make_settings,
    wait_for,
    worker_env,
)
from tests.tasks.test_cli import assert_usage_error, run_mailroom
from workers.batch import Handled
from workers.queue.disposition import Summary
from workers.queue.status import StatusStore

ARTIFACTS = REPO / "var" / "test-artifacts"
SENDER = "app@example.test"
IMPLICIT = "implicit.test"
BUECHER = "xn--bcher-kva.test"  # bücher.test: its MX host is 127.0.0.9
REFUSED_SENDER = f"550 5.7.1 <{SENDER}>: sender rejected"
# What each message's one recipient ends as, and what its task's result must say.
SCENARIOS = {
    f"ok@{IMPLICIT}": ("delivered", "1 delivered | ", ""),
    f"451-greylist@{IMPLICIT}": ("deferred", "1 deferred (451 4.7.1) | ", "451 4.7.1 greylisted"),
    f"550-unknown@{IMPLICIT}": ("bounced", "1 bounced (550 5.1.1) | ", "550 5.1.1 unknown user"),
    f"ok@{BUECHER}": (
        "bounced",
        "1 bounced (550 5.7.1) | ",
        "550 5.7.1 <*@example.test>: sender rejected",
    ),
}
# An address with its local part: Flower must show none (a redacted one reads "*@domain").
_ADDRESS = re.compile(r"[^\s*'\"<>\[\](),;]+@")
_START_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _http(url: str, data: dict[str, str] | None = None) -> tuple[int, str]:
    """GET (or POST `data` as a form to) `url`; returns (status, body), 0 when nothing answers."""
    body = None if data is None else urllib.parse.urlencode(data).encode()
    try:
        with urllib.request.urlopen(url, data=body, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


class Flower:
    """A running `mailroom flower` on `base` (http://127.0.0.1:PORT)."""

    def __init__(self, base: str, process: WorkerProcess) -> None:
        self.base = base
        self.process = process

    def tasks(self) -> list[dict[str, Any]]:
        """What Flower's tasks table asks its server for: the 100 latest tasks, as JSON."""
        form = {
            "draw": "1",
            "start": "0",
            "length": "100",
            "order[0][column]": "0",
            "order[0][dir]": "desc",
            "columns[0][data]": "received",
        }
        status, body = _http(f"{self.base}/tasks/datatable", form)
        tasks: list[dict[str, Any]] = json.loads(body)["data"] if status == 200 else []
        return tasks


@pytest.mark.slow
def test_flower_shows_delivery_outcomes_args_and_shard_queues(
    make_redis_server: RedisServerFactory,
    dns_server: DnsServer,
    mx_port: int,
    make_sink: MakeSink,
    tmp_path: Path,
) -> None:
    server = make_redis_server()
    make_sink("127.0.0.5", port=mx_port)
    make_sink("127.0.0.9", port=mx_port, mail_from_reply=REFUSED_SENDER)
    # Retries far away: each message has exactly one task while the test runs.
    settings = make_settings(server.url, dns_server, mx_port, retry_delays="600")
    port = _free_port()
    env = {**worker_env(settings), "MAILROOM_FLOWER_LISTEN": f"127.0.0.1:{port}"}
    client = server.client()
    processes: list[WorkerProcess] = []
    try:
        flower = Flower(f"http://127.0.0.1:{port}", _spawn(tmp_path, ["flower"], "flower", env))
        processes.append(flower.process)
        wait_for(
            lambda: _http(f"{flower.base}/healthcheck")[0] == 200 or not flower.process.running(),
            timeout=_START_TIMEOUT,
            what="Flower answering HTTP",
        )
        assert flower.process.running(), "mailroom flower exited"
        # Nothing else subscribes to this Redis yet: the subscription is Flower's event receiver.
        wait_for(
            lambda: int(client.pubsub_numpat()) >= 1,
            timeout=_START_TIMEOUT,
            what="Flower's event receiver subscribed",
        )
        mailroom = Mailroom(settings, client=client)
        ids = {
            to: mailroom.notify_many(
                [{"sender": SENDER, "to": [to], "subject": "Hi", "text": "x"}]
            )[0]
            for to in SCENARIOS
        }

        broker = _page(f"{flower.base}/broker", "flower-broker.png", tmp_path)
        waiting = dict.fromkeys([INTAKE_QUEUE, *all_shard_queues(SHARDS)], 0)
        for to in SCENARIOS:
            waiting[f"mailroom.shard.{shard_of(to.partition('@')[2], SHARDS)}"] += 1
        waiting |= {DEFERRED_ROW: 0, DEAD_ROW: 0}  # Mailroom's own queues, outside Celery
        queues = {row[0]: row[1] for row in broker["queue-table"].rows}
        assert queues == {name: str(depth) for name, depth in waiting.items()}

        worker = _spawn(tmp_path, ["worker", "--concurrency", "4"], "worker", env)
        processes.append(worker)
        status = StatusStore(client, ttl=60)

        def outcome(message_id: str) -> str | None:
            view = status.view(message_id)
            return None if view is None else str(view["recipients"][0]["state"])

        expected = {ids[to]: state for to, (state, _, _) in SCENARIOS.items()}
        wait_for(
            lambda: {i: outcome(i) for i in expected} == expected,
            timeout=_START_TIMEOUT,
            what=f"outcomes {expected}",
        )
        wait_for(
            lambda: sum(task["state"] == "SUCCESS" for task in flower.tasks()) == len(ids),
            timeout=_START_TIMEOUT,
            what="Flower seeing every task succeed",
        )

        rows = _page(f"{flower.base}/tasks", "flower-tasks.png", tmp_path)["tasks-table"]
        _assert_tasks_page(rows, ids)
        after = _page(f"{flower.base}/broker", "flower-broker-after.png", tmp_path)
        counts = {row[0]: row[1] for row in after["queue-table"].rows}
        assert counts[DEAD_ROW] == "2"  # the two bounces
        assert counts[DEFERRED_ROW] in ("0", "1")  # the greylisted one, unless being retried
    finally:
        client.close()
        for process in reversed(processes):
            process.kill()
        for process in processes:
            print(f"---- {process.log.name} (pid {process.pid}) ----")
            print(process.log.read_text(errors="replace")[-20000:])


def _assert_tasks_page(table: Table, ids: dict[str, str]) -> None:
    """One row per message, its task's args its id and destination, its result its outcome."""
    records = table.records()
    assert len(records) == len(ids), records
    by_id = {}
    for record in records:
        assert record["name"] == "mailroom.deliver"
        assert record["state"] == "SUCCESS"
        assert not _ADDRESS.search(record["args"] + record["result"]), record
        [message_id] = [i for i in ids.values() if i in record["args"]]
        by_id[message_id] = record
    for to, (_, lead, reply) in SCENARIOS.items():
        record = by_id[ids[to]]
        destination = to.partition("@")[2]
        # Celery hands Flower the repr of the args and of the result: quotes included.
        assert record["args"] == f"[[['{ids[to]}', '{destination}', 1]]]"
        result = record["result"].strip("'")
        assert result.startswith(lead), result
        outcome = lead.partition(" (")[0].removesuffix(" | ")
        assert f"{ids[to]} {destination}: {outcome}" in result
        assert reply in result


def _spawn(tmp_path: Path, args: list[str], name: str, env: dict[str, str]) -> WorkerProcess:
    """`mailroom ARGS` in its own process group, output to tmp_path/NAME.log."""
    log = tmp_path / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tasks.cli", *args],
            cwd=tmp_path,  # Settings reads .env from the working directory: none there
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(process, log)


def _page(url: str, png: str, tmp_path: Path) -> dict[str, Table]:
    """The tables of `url` as Chromium renders them; its screenshot kept as an artifact."""
    shot = ARTIFACTS / png
    dom = render(url, shot)
    shutil.copy(shot, tmp_path / png)
    print(f"screenshot of {url}: {shot}")
    return tables(dom)


@pytest.mark.slow
@pytest.mark.parametrize("listen", ["0.0.0.0:5555", "[::]:5555"])
def test_flower_off_loopback_without_basic_auth_is_refused(tmp_path: Path, listen: str) -> None:
    run = run_mailroom("flower", env={"MAILROOM_FLOWER_LISTEN": listen}, cwd=tmp_path)

    assert_usage_error(run, "MAILROOM_FLOWER_BASIC_AUTH")


def handled(message_id: str, destination: str, **summary: Any) -> Handled:
    return Handled(message_id, destination, Summary(**summary))


def test_delivery_result_leads_with_the_tally() -> None:
    batch = [
        handled("a1", "one.test", delivered=1),
        handled(
            "b2", "two.test", delivered=2, deferred=1, last="451 4.7.1 greylisted", code="451 4.7.1"
        ),
        handled("c3", "three.test", bounced=1, last="550 5.1.1 unknown user", code="550 5.1.1"),
    ]

    assert delivery_result(batch) == (
        "3 delivered, 1 deferred, 1 bounced (451 4.7.1, 550 5.1.1) | a1 one.test: 1 delivered; "
        "b2 two.test: 2 delivered, 1 deferred 451 4.7.1 greylisted; "
        "c3 three.test: 1 bounced 550 5.1.1 unknown user"
    )


def test_delivery_result_keeps_only_the_domain_of_quoted_addresses() -> None:
    last = "550 5.1.1 <bob.smith+x@one.test>: Recipient address rejected"

    result = delivery_result([handled("a1", "one.test", bounced=1, last=last, code="550 5.1.1")])

    assert result == (
        "1 bounced (550 5.1.1) | a1 one.test: 1 bounced 550 5.1.1 <*@one.test>: "
        "Recipient address rejected"
    )


def test_delivery_result_of_nothing_and_of_a_long_batch() -> None:
    assert delivery_result([]) == "nothing due"
    long = delivery_result([handled(f"{n:032x}", "one.test", delivered=1) for n in range(100)])
    assert long.startswith("100 delivered | ")
    assert len(long) == 1000


def test_delivery_result_without_counts_or_enhanced_codes() -> None:
    batch = [
        handled("a1", "one.test"),
        handled("b2", "two.test", expired=1, last="421 service closing", code="421"),
    ]

    assert delivery_result(batch[:1]) == "no outcome | a1 one.test: nothing to do"
    assert delivery_result(batch).startswith("1 expired (421) | ")
