"""Recipient and message states: which moves a recipient's state may make, the message state its
recipients' states add up to, a delivery's schedule, and the keys and time format of a status
record (the store itself is `workers.queue.status`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from workers.model.reply import Reply
from workers.model.states import RecipientState


class MessageState(StrEnum):
    """A message's state, derived from its recipients' states."""

    QUEUED = "queued"  # every recipient queued
    IN_PROGRESS = "in_progress"  # some recipient tried and not final, or a mix not yet final
    DELIVERED = "delivered"  # every recipient delivered
    PARTIALLY_DELIVERED = "partially_delivered"  # all final, some delivered, some not
    FAILED = "failed"  # all final, none delivered


FINAL_STATES = frozenset(
    {
        RecipientState.DELIVERED,
        RecipientState.BOUNCED,
        RecipientState.EXPIRED,
        RecipientState.DELETED,
        RecipientState.SUPPRESSED,
    }
)
_ONWARD = frozenset({RecipientState.DEFERRED, *FINAL_STATES})
TRANSITIONS: Mapping[RecipientState, frozenset[RecipientState]] = {
    RecipientState.QUEUED: _ONWARD,
    RecipientState.DEFERRED: _ONWARD,
    RecipientState.DELIVERED: frozenset(),
    RecipientState.BOUNCED: frozenset(),
    RecipientState.EXPIRED: frozenset(),
    RecipientState.DELETED: frozenset(),
    RecipientState.SUPPRESSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """The schedule of one delivery (message, destination): attempts made and its age."""

    attempt: int  # the attempt the next delivery task carries (1 for the first)
    first_queued: float  # UNIX time it was queued (or replayed): MAX_AGE counts from here


def can_transition(current: RecipientState, new: RecipientState) -> bool:
    """Whether `record` lets a recipient move from `current` to `new`."""
    return new in TRANSITIONS[current]


def message_state(states: Iterable[RecipientState]) -> MessageState:
    """The message state that a message whose recipients are in `states` is in."""
    seen = set(states)
    if seen <= {RecipientState.QUEUED}:
        return MessageState.QUEUED
    if not seen <= FINAL_STATES:
        return MessageState.IN_PROGRESS
    if seen == {RecipientState.DELIVERED}:
        return MessageState.DELIVERED
    if RecipientState.DELIVERED in seen:
        return MessageState.PARTIALLY_DELIVERED
    return MessageState.FAILED


def iso_time(timestamp: float) -> str:
    """A UNIX time as ISO-8601 in UTC with milliseconds, as status and dead letters show it."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


class Record(NamedTuple):
    """One delivery's results for `StatusStore.record_many`: message id, (state, reply) by
    address, the attempt records, the next attempt number (None: not rescheduled) and its due
    time (UNIX time, shown as deferred recipients' "next_attempt"; None: not known). The last
    three describe the attempt for its events: its number (0: no attempt was made), the server
    that gave the last reply, and whether that conversation was encrypted (None: no server)."""

    message_id: str
    outcomes: Mapping[str, tuple[RecipientState, Reply]]
    attempts: Sequence[Mapping[str, Any]]
    next_attempt: int | None
    due: float | None
    attempt: int = 0
    host: str = ""
    tls: bool | None = None


def record_keys(message_id: str) -> list[str]:
    """The keys of one message's status record: msg, rcpt, dlv, attempts."""
    return [
        f"mailroom:msg:{message_id}",
        f"mailroom:rcpt:{message_id}",
        f"mailroom:dlv:{message_id}",
        f"mailroom:attempts:{message_id}",
    ]
