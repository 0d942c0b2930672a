"""Each message's status record, and the one place recipient states change.

A recipient's state only moves forward: queued → deferred | delivered | bounced | expired |
deleted | suppressed, deferred → the same, and the last five are final (`status_states`). The
one way back is `requeue` (an operator replaying dead letters), which turns bounced, expired or
deleted recipients of one destination into queued ones with a fresh age. Every change writes its
delivery event in the same script (`workers.queue.events`). Transitions are checked inside
Redis (Lua), so two workers recording at once cannot move a state backwards; an illegal one is
skipped and logged. The message's own state is derived from its recipients' (`message_state`).

Keys (every one EXPIREs after `ttl`, refreshed on each write):
    mailroom:msg:{id}        hash {created: UNIX time, sender, enqueued: "1" once on its queues,
                             claim: token of the producer that enqueues it, labels: tags and
                             metadata JSON when given}
    mailroom:rcpt:{id}       hash address → JSON {"destination","state","code","enhanced","reply"}
    mailroom:dlv:{id}        hash destination → JSON {"attempt": int, "first_queued": UNIX time}
    mailroom:attempts:{id}   list of attempt JSON objects, the newest 100 kept
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from workers.model.reply import Reply
from workers.model.states import RecipientState
from workers.queue import status_scripts as scripts
from workers.queue.events import DEFAULT_MAXLEN, EVENTS_KEY
from workers.queue.redis_text import redis_text
from workers.queue.status_creation import StatusCreation
from workers.queue.status_states import (
    FINAL_STATES,
    TRANSITIONS,
    DeliveryState,
    MessageState,
    Record,
    can_transition,
    iso_time,
    message_state,
    record_keys,
)
from workers.queue.status_view import read_view
from workers.queue.suppression import KEY as SUPPRESSION_KEY

__all__ = [
    "ATTEMPTS_KEPT",
    "FINAL_STATES",
    "TRANSITIONS",
    "Claim",
    "DeliveryState",
    "MessageState",
    "Record",
    "StatusStore",
    "can_transition",
    "iso_time",
    "message_state",
    "record_keys",
]

ATTEMPTS_KEPT = 100

_log = logging.getLogger(__name__)


def _schedule(value: bytes | str | None) -> DeliveryState | None:
    """A delivery's schedule from its field in the deliveries hash (None: no such delivery)."""
    if value is None:
        return None
    record = json.loads(value)
    return DeliveryState(int(record["attempt"]), float(record["first_queued"]))


def _pending(
    entries: Sequence[Any], listed: Sequence[Any], destination: str
) -> tuple[list[str], dict[str, bytes | str]]:
    """The addresses of `destination` still queued or deferred, from the recipients hash as a
    flat list, and the suppression list's values for those of them it holds."""
    waiting = {RecipientState.QUEUED, RecipientState.DEFERRED}
    found = []
    hits: dict[str, bytes | str] = {}
    for index in range(0, len(entries), 2):
        recipient = json.loads(entries[index + 1])
        if recipient["destination"] == destination and recipient["state"] in waiting:
            address = redis_text(entries[index])
            found.append(address)
            hit = listed[index // 2] if listed else None
            if hit is not None:
                hits[address] = hit
    return sorted(found), hits


@dataclass(frozen=True, slots=True)
class Claim:
    """Where one delivery stands: its schedule (None: unknown), its addresses still queued or
    deferred (sorted), and the suppression list's stored values for any of them."""

    state: DeliveryState | None
    pending: list[str]
    listed: dict[str, bytes | str]


def _log_refused(message_id: str, refused: Sequence[bytes | str]) -> None:
    for i in range(0, len(refused), 3):
        address, current, new = (redis_text(value) for value in refused[i : i + 3])
        _log.warning(
            "message %s: recipient %s not moved from %s to %s",
            message_id,
            address,
            current or "(unknown recipient)",
            new,
        )


class StatusStore(StatusCreation):
    """Reads and writes status records; the only writer of recipient states. Creating records
    and the enqueued mark are `StatusCreation`'s."""

    def __init__(
        self, redis: redis.Redis, ttl: int, *, events_maxlen: int = DEFAULT_MAXLEN
    ) -> None:
        super().__init__(redis, ttl, events_maxlen=events_maxlen)
        self._record = redis.register_script(scripts.RECORD)
        self._requeue = redis.register_script(scripts.REQUEUE)
        self._throttle = redis.register_script(scripts.THROTTLE)
        self._claims = redis.register_script(scripts.CLAIMS)

    def claims(self, deliveries: Sequence[tuple[str, str]]) -> list[Claim]:
        """`delivery` of many (message_id, destination) pairs, each with the addresses of that
        destination still queued or deferred ([] for an unknown id) and what the suppression
        list holds for them: one script call, so one round trip and one command."""
        if not deliveries:
            return []
        keys = [SUPPRESSION_KEY]
        for message_id, _ in deliveries:
            msg_keys = self._keys(message_id)
            keys += [msg_keys[2], msg_keys[1]]
        replies = self._claims(keys=keys, args=[destination for _, destination in deliveries])
        claims = []
        for (_, destination), (schedule, entries, listed) in zip(deliveries, replies, strict=True):
            pending, hits = _pending(entries, listed, destination)
            claims.append(Claim(_schedule(schedule), pending, hits))
        return claims

    def delivery(self, message_id: str, destination: str) -> DeliveryState | None:
        """The schedule of one delivery, or None when the message or destination is unknown."""
        return _schedule(self._redis.hget(self._keys(message_id)[2], destination))

    def record_many(self, records: Sequence[Record]) -> None:
        """Apply deliveries' results, each in one atomic step, all in one round trip.

        Sets each address's state and last reply (code, enhanced code, text) where the move is
        allowed (`can_transition`), appends the attempt records (the newest 100 are kept), and,
        when a next attempt number is given, sets the attempt counter of the recipients'
        destination; the due time becomes the "next_attempt" time of recipients moved to
        deferred. Each move applied writes its event (`workers.queue.events`) in the same
        script. Refused moves and unknown addresses are skipped and logged. Does nothing for an
        unknown or expired message.
        """
        if not records:
            return
        pipe = self._redis.pipeline(transaction=False)
        for record in records:
            arguments = scripts.record_arguments(
                record, self._ttl, ATTEMPTS_KEPT, self._events_maxlen
            )
            keys = [*self._keys(record.message_id), EVENTS_KEY]
            self._record(keys=keys, args=arguments, client=pipe)
        for record, refused in zip(records, pipe.execute(), strict=True):
            _log_refused(record.message_id, refused)

    def throttle_many(self, held: Sequence[tuple[str, Sequence[str], Reply, float]]) -> None:
        """Note deliveries the gate held back: (message id, addresses, the gate's reply, due
        UNIX time) each. Their queued or deferred recipients show `deferred`, with the reply's
        text as "throttled" and the due time as "next_attempt"; no attempt is recorded."""
        if not held:
            return
        pipe = self._redis.pipeline(transaction=False)
        for message_id, addresses, reply, due in held:
            keys = self._keys(message_id)[:2]
            args: list[str | int] = [self._ttl, int(reply.code), reply.enhanced, reply.text]
            args += [iso_time(due), *addresses]
            self._throttle(keys=keys, args=args, client=pipe)
        pipe.execute()

    def requeue(self, message_id: str, destination: str, now: float) -> list[str]:
        """Put the bounced, expired and deleted recipients of one delivery back to queued.

        The delivery gets a fresh `first_queued` (= `now`) and its attempt counter goes up by
        one; each recipient requeued gets a `replayed` event. Returns the addresses requeued,
        sorted ([] when there were none).
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        requeued = self._requeue(
            keys=[*self._keys(message_id), EVENTS_KEY],
            args=[destination, repr(now), self._ttl, self._events_maxlen],
        )
        return sorted(redis_text(address) for address in requeued)

    def view(self, message_id: str) -> dict[str, Any] | None:
        """The record in the shape of `mailroom status --json`, or None for an unknown id
        (`workers.queue.status_view`)."""
        return read_view(self._redis, message_id)
