"""The operator's view of the deferred set: list it (Postfix's `mailq`) and make entries due now
(`postqueue -f` / `-s`). `mailroom queue` and `mailroom queue flush` are built on it.

Bounded: the set is read with ZSCAN in pages (`PAGE` members), each page's status records in one
pipelined round trip, so a queue of a million entries costs many small steps, never one huge
reply; a `progress` callback hears after each page. Safe while workers run: a flush moves an
entry's due time with one script per page that only touches members still in the set (one a
sweeper claimed meanwhile is left to it) and never makes an entry later than it was. An entry
whose delivery is over (stale attempt, no recipient waiting, record gone) is not listed: a
worker would skip it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from workers.model.redaction import redact_addresses
from workers.queue.deferred import DEFERRED_KEY, DeferredEntry, deferred_entry, deferred_member
from workers.queue.redis_text import redis_text
from workers.queue.status_states import iso_time, record_keys

PAGE = 500  # members per ZSCAN page and per script call
_WAITING = ("queued", "deferred")

Progress = Callable[[int, int], None]  # (members looked at so far, members in the set)

# KEYS: deferred. ARGV: now, members. Each member still deferred and due later than now becomes
# due now; returns the members that were still deferred.
_FLUSH = """
local found = {}
for i = 2, #ARGV do
  local due = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if due then
    table.insert(found, ARGV[i])
    if tonumber(due) > tonumber(ARGV[1]) then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    end
  end
end
return found
"""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which deferred deliveries an operator means: all, a destination's, or some messages'."""

    destination: str | None = None
    message_ids: frozenset[str] = field(default_factory=frozenset)
    older_than: float | None = None  # seconds since first queued, at least

    def wants(self, entry: DeferredEntry) -> bool:
        """Whether `entry` is selected by destination and message id (age needs the record)."""
        if self.destination is not None and entry.destination != self.destination:
            return False
        return not self.message_ids or entry.message_id in self.message_ids


@dataclass(frozen=True, slots=True)
class QueuedDelivery:
    """One deferred delivery as `mailroom queue` lists it."""

    message_id: str
    destination: str
    attempts: int  # attempts made so far (a throttle is none)
    first_queued: float
    due: float
    recipients: int  # recipients of the destination still waiting
    code: int | None  # the last reply of the first waiting recipient
    enhanced: str
    reply: str  # addresses quoted in it keep only their domain
    throttled: str | None

    def as_json(self, now: float) -> dict[str, Any]:
        """The `mailroom queue --json` shape of this delivery."""
        return {
            "message_id": self.message_id,
            "destination": self.destination,
            "recipients": self.recipients,
            "attempts": self.attempts,
            "queued_at": iso_time(self.first_queued),
            "age": round(max(now - self.first_queued, 0.0), 1),
            "next_attempt": iso_time(self.due),
            "code": self.code,
            "enhanced": self.enhanced,
            "reply": self.reply,
            "throttled": self.throttled,
        }


class DeferredListing:
    """Lists and flushes the deferred set, in pages."""

    def __init__(self, client: redis.Redis, page: int = PAGE) -> None:
        self._redis = client
        self._page = page
        self._flush = client.register_script(_FLUSH)

    def pages(
        self, progress: Progress | None = None
    ) -> Iterator[list[tuple[DeferredEntry, float]]]:
        """The deferred set's (entry, due time) in ZSCAN pages. A member present throughout is
        seen at least once (rarely twice, which every caller tolerates)."""
        total = int(self._redis.zcard(DEFERRED_KEY))
        seen = 0
        cursor = 0
        while True:
            cursor, members = self._redis.zscan(DEFERRED_KEY, cursor, count=self._page)
            seen += len(members)
            yield [(deferred_entry(_text(member)), float(score)) for member, score in members]
            if progress is not None:
                progress(seen, total)
            if cursor == 0:
                return

    def deliveries(
        self, selection: Selection, now: float, progress: Progress | None = None
    ) -> list[QueuedDelivery]:
        """The selected deferred deliveries still waiting, oldest (first queued) first."""
        found: dict[tuple[str, str], QueuedDelivery] = {}
        for page in self.pages(progress):
            wanted = [(entry, due) for entry, due in page if selection.wants(entry)]
            for delivery in self._described(wanted):
                age = now - delivery.first_queued
                if selection.older_than is None or age >= selection.older_than:
                    found[(delivery.message_id, delivery.destination)] = delivery
        return sorted(found.values(), key=lambda d: (d.first_queued, d.due, d.message_id))

    def flush(
        self, selection: Selection, now: float, progress: Progress | None = None
    ) -> list[DeferredEntry]:
        """Make the selected deferred deliveries due now; returns them (each once)."""
        flushed: dict[DeferredEntry, None] = {}
        for page in self.pages(progress):
            members = [deferred_member(*entry) for entry, _ in page if selection.wants(entry)]
            if members:
                found = self._flush(keys=[DEFERRED_KEY], args=[now, *members])
                flushed.update((deferred_entry(_text(member)), None) for member in found)
        return list(flushed)

    def _described(self, page: list[tuple[DeferredEntry, float]]) -> list[QueuedDelivery]:
        """Each entry with its status record's details, in one round trip; stale ones left out."""
        if not page:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for entry, _ in page:
            _, rcpt, dlv, _ = record_keys(entry.message_id)
            pipe.hget(dlv, entry.destination)
            pipe.hgetall(rcpt)
        replies = pipe.execute()
        described = []
        for index, (entry, due) in enumerate(page):
            schedule, recipients = replies[2 * index], replies[2 * index + 1]
            delivery = _delivery(entry, due, schedule, recipients)
            if delivery is not None:
                described.append(delivery)
        return described


def _delivery(
    entry: DeferredEntry, due: float, schedule: bytes | None, recipients: Mapping[Any, Any]
) -> QueuedDelivery | None:
    if schedule is None:
        return None  # the record is gone (STATUS_TTL): nothing left to deliver
    state = json.loads(schedule)
    if int(state["attempt"]) != entry.attempt:
        return None  # a stale entry: its attempt already ran
    records = ((redis_text(address), json.loads(value)) for address, value in recipients.items())
    waiting = sorted(
        (address, record)
        for address, record in records
        if record["destination"] == entry.destination and record["state"] in _WAITING
    )
    if not waiting:
        return None
    _, first = waiting[0]
    return QueuedDelivery(
        message_id=entry.message_id,
        destination=entry.destination,
        attempts=entry.attempt - 1,
        first_queued=float(state["first_queued"]),
        due=due,
        recipients=len(waiting),
        code=first.get("code"),
        enhanced=str(first.get("enhanced") or ""),
        reply=redact_addresses(str(first.get("reply") or "")),
        throttled=first.get("throttled"),
    )


def _text(member: object) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)
