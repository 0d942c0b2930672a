"""The per-attempt log line: structured, one per attempt, no addresses, bodies or secrets."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from workers.model.outcome import Bounced, Deferred, Delivered
from workers.model.reply import Reply, Step
from workers.model.report import Attempt, DeliveryReport, StepRecord
from workers.observe.attempt_log import log_attempts

RESOLVED = StepRecord("resolve", Reply(250, "2.0.0", "x.test -> mx", Step.RESOLVE_MX), 2.0)


def steps(*records: tuple[str, int, str, Step]) -> tuple[StepRecord, ...]:
    return tuple(StepRecord(c, Reply(code, e, "text", s), 1.5) for c, code, e, s in records)


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "mailroom.attempts"]


def test_one_line_per_attempt_names_the_deciding_step(caplog: pytest.LogCaptureFixture) -> None:
    refused = steps(("connect", 421, "4.4.1", Step.OPEN_SESSION))
    delivered = steps(
        ("connect", 220, "", Step.OPEN_SESSION),
        ("STARTTLS", 220, "2.0.0", Step.OPEN_SESSION),
        ("RCPT TO", 250, "2.1.5", Step.RCPT_TO),
        ("DATA", 250, "2.0.0", Step.DATA),
        ("QUIT", 221, "2.0.0", Step.QUIT),
    )
    at = datetime.now(UTC)
    report = DeliveryReport(
        "x.test",
        (Delivered("secret-person@x.test", Reply(250, "2.0.0", "ok", Step.DATA)),),
        RESOLVED,
        (
            Attempt(at, "mx1.x.test", "127.0.0.2", refused),
            Attempt(at, "mx2.x.test", "127.0.0.3", delivered),
        ),
    )
    with caplog.at_level(logging.INFO, logger="mailroom.attempts"):
        log_attempts("m1", 3, report)

    first, second = lines(caplog)
    assert (first["host"], first["step"], first["code"], first["enhanced"]) == (
        "mx1.x.test",
        "open_session",
        421,
        "4.4.1",
    )
    assert (second["step"], second["command"], second["code"], second["tls"]) == (
        "data",
        "DATA",
        250,
        True,
    )
    assert (second["message_id"], second["destination"], second["attempt"], second["ms"]) == (
        "m1",
        "x.test",
        3,
        7.5,
    )
    assert "secret-person" not in caplog.text


@pytest.mark.parametrize(
    "reply",
    [
        Reply(556, "5.1.10", "null MX", Step.RESOLVE_MX),
        Reply(451, "4.4.5", "throttled by Mailroom", Step.GATE),
    ],
)
def test_no_server_reached_logs_the_stopping_step(
    caplog: pytest.LogCaptureFixture, reply: Reply
) -> None:
    outcome = Bounced("a@x.test", reply) if reply.code >= 500 else Deferred("a@x.test", reply)
    report = DeliveryReport("x.test", (outcome,), StepRecord("resolve", reply, 1.0), ())
    with caplog.at_level(logging.INFO, logger="mailroom.attempts"):
        log_attempts("m1", 1, report)

    [line] = lines(caplog)
    assert (line["step"], line["code"], line["host"]) == (reply.step.value, reply.code, "")


def test_addresses_quoted_in_a_reply_keep_only_their_domain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rejected = Reply(550, "5.1.1", "<bob@example.org>: Recipient address rejected", Step.RCPT_TO)
    tried = (StepRecord("RCPT TO", rejected, 1.0),)
    report = DeliveryReport(
        "example.org",
        (Bounced("bob@example.org", rejected),),
        RESOLVED,
        (Attempt(datetime.now(UTC), "mx.example.org", "127.0.0.2", tried),),
    )
    with caplog.at_level(logging.INFO, logger="mailroom.attempts"):
        log_attempts("m1", 1, report)

    [line] = lines(caplog)
    assert line["text"] == "<*@example.org>: Recipient address rejected"
    assert "bob" not in caplog.text
