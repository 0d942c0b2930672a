"""Outcome classification and failure scope (KumoMTA's classify_record, Postfix's smtp_trouble)."""

from __future__ import annotations

import pytest

from workers.model.outcome import Bounced, Deferred, Delivered, classify, try_next_host
from workers.model.reply import Reply, Step


def _reply(code: int, step: Step = Step.RCPT_TO) -> Reply:
    return Reply(code, "", "text", step)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (250, Delivered),
        (251, Delivered),
        (421, Deferred),
        (450, Deferred),
        (451, Deferred),
        (452, Deferred),
        (503, Deferred),  # bad sequence: the client's or server's confusion, not the recipient's
        (354, Deferred),  # an intermediate reply where a final one was due
        (550, Bounced),
        (552, Bounced),
        (553, Bounced),
        (554, Bounced),
        (556, Bounced),
    ],
)
def test_classify_by_reply_class(code: int, kind: type) -> None:
    outcome = classify("a@x.test", _reply(code))
    assert isinstance(outcome, kind)
    assert outcome.recipient == "a@x.test"
    assert outcome.reply.code == code


def test_deferred_keeps_retry_after() -> None:
    outcome = classify("a@x.test", _reply(451, Step.GATE), retry_after=2.5)
    assert outcome == Deferred("a@x.test", _reply(451, Step.GATE), 2.5)


@pytest.mark.parametrize(
    ("code", "step", "next_host"),
    [
        (421, Step.OPEN_SESSION, True),  # refused or dropped connection, 4xx greeting
        (554, Step.OPEN_SESSION, True),  # 5xx greeting: Postfix's smtp_skip_5xx_greeting
        (451, Step.MAIL_FROM, True),
        (451, Step.RCPT_TO, True),
        (452, Step.DATA, True),
        (503, Step.RCPT_TO, True),
        (550, Step.RCPT_TO, False),  # the recipient itself is refused: final
        (550, Step.MAIL_FROM, False),
        (554, Step.DATA, False),
        (250, Step.DATA, False),
        (250, Step.OPEN_SESSION, False),
    ],
)
def test_try_next_host(code: int, step: Step, next_host: bool) -> None:
    assert try_next_host(_reply(code, step)) is next_host
