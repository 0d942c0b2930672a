"""What happened to one recipient: Delivered, Deferred or Bounced, decided from a `Reply`.

Classification follows KumoMTA's `classify_record`: 2xx delivers; 4xx defers; a 503 (bad
sequence) is our client's fault or a server's confusion, never the recipient's, so it defers;
1xx/3xx where a final reply was due is a broken server and defers; every other 5xx bounces.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.model.reply import Code, Reply, Step


@dataclass(frozen=True, slots=True)
class Delivered:
    """The server took responsibility for the message for this recipient (RFC 5321 §6.1)."""

    recipient: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class Deferred:
    """Try again later; `retry_after` (seconds) when the deferral says when, as a throttle does."""

    recipient: str
    reply: Reply
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Bounced:
    """Permanent failure: the recipient will not get this message by trying again."""

    recipient: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class Suppressed:
    """The recipient is on the suppression list: nothing was sent to it. `reply` is Mailroom's,
    carrying the entry's reason and date."""

    recipient: str
    reply: Reply


Outcome = Delivered | Deferred | Bounced | Suppressed


def classify(recipient: str, reply: Reply, retry_after: float | None = None) -> Outcome:
    """Turn the last reply a recipient got into its outcome."""
    match reply.reply_class:
        case 2:
            return Delivered(recipient, reply)
        case 5 if reply.code != Code.BAD_SEQUENCE:
            return Bounced(recipient, reply)
        case _:
            return Deferred(recipient, reply, retry_after)


def try_next_host(reply: Reply) -> bool:
    """Whether a recipient that got `reply` from one host may still be tried at the next one.

    Postfix's `smtp_trouble.c`: a transient failure keeps the recipient for the next mail
    exchanger, and so does any failure to open the session (a 5xx greeting included, as
    Postfix's `smtp_skip_5xx_greeting`), because it says something about that host, not about
    the recipient. A 2xx or a 5xx to the recipient's own commands is final.
    """
    if reply.reply_class == 2:
        return False
    return reply.step is Step.OPEN_SESSION or isinstance(classify("", reply), Deferred)
