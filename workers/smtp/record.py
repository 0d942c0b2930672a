"""What one SMTP session has recorded so far: its steps, and each recipient's final reply.

A `Ledger` is shared by the two halves of a session: opening it (`workers.smtp.session`) and
each mail transaction on it (`workers.smtp.transaction`). Both record every command's reply, and
apply a failure to every recipient still waiting the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from workers.model.reply import Reply, Step
from workers.model.report import StepRecord

AMBIGUOUS = "; the server may have accepted the message, so it will be retried (at least once)"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed per phase (RFC 5321 §4.5.3.2 gives the upper bounds)."""

    connect: float  # TCP connect (and the TLS handshake of implicit TLS)
    command: float  # each command's reply: greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, QUIT
    data: float  # DATA: the 354 and the reply after the final dot
    session: float  # the whole delivery, every server tried included
    rset: float = 20  # RSET on a reused connection (Postfix's smtp_rset_timeout)
    data_block: float = 180  # the message: most a write may wait for the server to read on


class Ledger:
    """The steps so far, the replies decided so far, and what the last reply implied."""

    def __init__(self, host: str, recipients: Sequence[str]) -> None:
        self.host = host
        self.recipients = list(recipients)
        self.steps: list[StepRecord] = []
        self.replies: dict[str, Reply] = {}
        self.step = Step.OPEN_SESSION
        self.body_sent = False  # the message went out after a 354: a lost reply is ambiguous
        self.lost = False  # the last reply was made up because the server's never came
        self.throttled = False  # the server gave a throttling reply (421, 45x 4.7.x, ...)

    def record(self, command: str, reply: Reply, started: float, at: float | None = None) -> None:
        """Record `reply` to `command`, sent at `started` and answered at `at` (default: now),
        both `time.perf_counter()`."""
        ended = time.perf_counter() if at is None else at
        self.steps.append(StepRecord(command, reply, (ended - started) * 1000))

    def name_recipient(self, recipient: str) -> None:
        """Note whose RCPT TO the last step answered (`mailroom status` names it on its row)."""
        if self.steps and self.steps[-1].command == "RCPT TO":
            self.steps[-1] = replace(self.steps[-1], recipient=recipient)

    def fail(self, reply: Reply, command: str | None = None) -> bool:
        """Apply a session-wide failure to everyone still waiting; always False.

        `command` names a reply Mailroom decided itself, which nothing has recorded yet.
        """
        if command is not None:
            self.steps.append(StepRecord(command, reply, 0.0))
        self.abandon(reply)
        return False

    def abandon(self, reply: Reply) -> None:
        """Give `reply` to every recipient that has no final reply yet."""
        if self.body_sent:
            reply = ambiguous(reply)
        for recipient in self.recipients:
            self.replies.setdefault(recipient, reply)


def ambiguous(reply: Reply) -> Reply:
    """`reply` for a message the server may have taken: RFC 5321 §6.1's duplicate window."""
    return Reply(reply.code, reply.enhanced, reply.text + AMBIGUOUS, reply.step)
