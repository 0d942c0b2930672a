"""What a delivery did, as values: each command's reply, each conversation, each outcome.

Shared by the delivery agent that makes them and the queue manager that records them, so the
queue never imports the SMTP client for its types.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from workers.model.outcome import Outcome
from workers.model.reply import Reply


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One command and its reply, as the status record shows it."""

    command: str  # "connect", "EHLO", "HELO", "STARTTLS", "AUTH PLAIN", "MAIL FROM", ...
    reply: Reply
    ms: float
    recipient: str = ""  # the address a RCPT TO was for (status records only; never logged)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One conversation with one server address."""

    at: datetime
    host: str
    address: str
    steps: tuple[StepRecord, ...]


def used_tls(steps: Iterable[StepRecord]) -> bool:
    """Whether a conversation of these steps was encrypted: a STARTTLS the server accepted."""
    return any(step.command == "STARTTLS" and step.reply.reply_class == 2 for step in steps)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """Everything one delivery did: the look-up, each conversation, and each outcome."""

    destination: str
    outcomes: tuple[Outcome, ...]
    resolution: StepRecord
    attempts: tuple[Attempt, ...]
    # The mode ("enforce", "testing") of the recipient domain's MTA-STS policy when the delivery
    # fell short of it: an MX host it does not name, or no (verified) TLS. None: no shortfall.
    mta_sts_failure: str | None = None
