"""The hard-bounce table: only replies about the address itself suppress it."""

from __future__ import annotations

import pytest

from workers.model.hard_bounce import is_hard_bounce
from workers.model.reply import Reply, Step, denied_network, no_such_domain, null_mx


@pytest.mark.parametrize(
    "enhanced", ["5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1", "5.7.1"]
)
def test_address_replies_at_rcpt_are_hard(enhanced: str) -> None:
    assert is_hard_bounce(Reply(550, enhanced, "no", Step.RCPT_TO))


def test_a_domain_without_mail_is_hard() -> None:
    assert is_hard_bounce(no_such_domain("gone.example"))
    assert is_hard_bounce(null_mx("nomail.example"))


@pytest.mark.parametrize(
    "reply",
    [
        Reply(550, "", "no such user", Step.RCPT_TO),  # no enhanced code: too little to act on
        Reply(552, "5.2.2", "mailbox full", Step.RCPT_TO),
        Reply(550, "5.7.515", "sender not authenticated", Step.RCPT_TO),
        Reply(450, "4.1.1", "try later", Step.RCPT_TO),
        Reply(550, "5.1.1", "unknown", Step.DATA),
        Reply(550, "5.1.1", "unknown", Step.MAIL_FROM),
        Reply(554, "5.7.1", "spam", Step.DATA),
        Reply(550, "5.1.1", "unknown", Step.OPEN_SESSION),
        denied_network("internal.example"),  # the operator's policy, not the address
    ],
)
def test_other_failures_are_not(reply: Reply) -> None:
    assert not is_hard_bounce(reply)
