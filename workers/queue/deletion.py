"""Taking deliveries out of the queue by hand: `mailroom queue delete` (Postfix's `postsuper -d`).

A message's recipients still queued or deferred become `deleted` (final) in its status record,
with "deleted by operator at …", and each deleted delivery gets a dead letter (reason `deleted`),
so `dlq show` keeps the history and `dlq replay` can undo it.

Safe while workers run, because it follows the workers' own rule: a delivery runs only under its
lease (`workers.queue.leases`), and a worker reads the recipients still waiting before it takes
the lease. One script per delivery (message, destination) therefore, atomically: does nothing
but answer "busy" while the lease is held (a session may be sending right now, so the message
must not also be reported deleted); else marks the waiting recipients deleted, drops the
delivery's deferred entry, and takes the lease itself for as long as a worker's would last. A
worker that read the recipients just before then cannot take the lease and parks the delivery
until it expires; any worker after that finds nobody waiting and skips. So a delivery is either
attempted or deleted, never both. (A `dlq replay` right after a delete is parked the same way,
and runs once that lease expires.)

The status record is written before the dead letter: a crash between them loses the history
line, never a deletion or a delivery.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from workers.model.redaction import redact_addresses
from workers.queue import events
from workers.queue.dead_letters import DeadLetters, DeadReason
from workers.queue.deferred import CLAIMED_KEY, DEFERRED_KEY
from workers.queue.events import DEFAULT_MAXLEN, EVENTS_KEY
from workers.queue.leases import lease_key
from workers.queue.redis_text import redis_text
from workers.queue.status_states import iso_time, record_keys

DELETED_BY = "deleted by operator"

# KEYS: msg, rcpt, dlv, the delivery's lease, deferred, claimed, the event stream. ARGV: message
# id, destination, hold (ms), hold token (starting "deleted-": a later delete is not told "busy"
# by it), status ttl, note, events maxlen. Each recipient deleted gets a `deleted` event. Returns
# {'unknown'}, {'busy'}, {'nothing'}, or {'deleted', address, record before, …}.
_DELETE = (
    events.LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local holder = redis.call('GET', KEYS[4])
if holder and string.sub(holder, 1, 8) ~= 'deleted-' then return {'busy'} end
local entries = redis.call('HGETALL', KEYS[2])
local taken = {'deleted'}
for i = 1, #entries, 2 do
  local rec = cjson.decode(entries[i + 1])
  if rec.destination == ARGV[2] and (rec.state == 'queued' or rec.state == 'deferred') then
    table.insert(taken, entries[i])
    table.insert(taken, entries[i + 1])
    rec.state, rec.deleted = 'deleted', ARGV[6]
    rec.throttled, rec.next_attempt = nil, nil
    redis.call('HSET', KEYS[2], entries[i], cjson.encode(rec))
  end
end
if #taken == 1 then return {'nothing'} end
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3])
local schedule = redis.call('HGET', KEYS[3], ARGV[2])
if schedule then
  local attempt = string.format('%d', cjson.decode(schedule).attempt)
  local member = ARGV[1] .. '|' .. ARGV[2] .. '|' .. attempt
  redis.call('ZREM', KEYS[5], member)
  redis.call('ZREM', KEYS[6], member)
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
local maxlen = tonumber(ARGV[7])
local labels = labels_of(KEYS[1], maxlen)
local attempt = ''
if schedule then attempt = string.format('%d', cjson.decode(schedule).attempt) end
for i = 2, #taken, 2 do
  emit(KEYS[7], maxlen, labels, 'deleted', KEYS[1], taken[i], ARGV[2], attempt, '', '',
    ARGV[6], '', '', '')
end
return taken
"""
)


class Outcome(StrEnum):
    """What a delete did to one delivery (message, destination)."""

    DELETED = "deleted"
    BUSY = "busy"  # being delivered right now: left alone
    NOTHING = "nothing"  # no recipient of it was waiting
    UNKNOWN = "unknown"  # no such message (or its record is gone)


@dataclass(frozen=True, slots=True)
class Deleted:
    """One delivery's result: its outcome and the recipients deleted."""

    message_id: str
    destination: str
    outcome: Outcome
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeletionPolicy:
    """`status_ttl`: seconds a status record is kept after a write (STATUS_TTL). `hold`: seconds
    the delete keeps a delivery's lease, as long as a worker's lease lives (`lease_ttl`)."""

    status_ttl: int
    hold: float
    events_maxlen: int = DEFAULT_MAXLEN


class Deletion:
    """Deletes the waiting deliveries of messages, recording each."""

    def __init__(self, client: redis.Redis, dead: DeadLetters, policy: DeletionPolicy) -> None:
        self._redis = client
        self._dead = dead
        self._policy = policy
        self._delete = client.register_script(_DELETE)

    def delete(self, message_id: str, now: float) -> list[Deleted]:
        """Delete every waiting delivery of one message; one result per destination (one
        `UNKNOWN` result for an unknown message)."""
        _, _, dlv, _ = record_keys(message_id)
        destinations = sorted(redis_text(d) for d in self._redis.hkeys(dlv))
        if not destinations:
            return [Deleted(message_id, "", Outcome.UNKNOWN)]
        return [self._delete_one(message_id, d, now) for d in destinations]

    def _delete_one(self, message_id: str, destination: str, now: float) -> Deleted:
        note = f"{DELETED_BY} at {iso_time(now)}"
        keys = record_keys(message_id)[:3]
        keys += [lease_key(message_id, destination), DEFERRED_KEY, CLAIMED_KEY, EVENTS_KEY]
        hold_ms = max(int(self._policy.hold * 1000), 1)
        token = f"deleted-{uuid.uuid4().hex}"
        args: list[str | int] = [message_id, destination, hold_ms, token]
        args += [self._policy.status_ttl, note, self._policy.events_maxlen]
        reply: Sequence[bytes | str] = self._delete(keys=keys, args=args)
        outcome = Outcome(redis_text(reply[0]))
        if outcome is not Outcome.DELETED:
            return Deleted(message_id, destination, outcome)
        pairs = [(redis_text(reply[i]), redis_text(reply[i + 1])) for i in range(1, len(reply), 2)]
        dead = [_dead_recipient(address, json.loads(record), note) for address, record in pairs]
        self._dead.add(message_id, destination, DeadReason.DELETED, dead, now)
        return Deleted(message_id, destination, outcome, tuple(sorted(a for a, _ in pairs)))


def _dead_recipient(address: str, record: dict[str, Any], note: str) -> dict[str, Any]:
    """A deleted recipient as its dead letter lists it: its last reply (a quoted address keeps
    only its domain; none if it was never tried) and who deleted it when."""
    return {
        "address": address,
        "code": record.get("code"),
        "enhanced": str(record.get("enhanced") or ""),
        "reply": redact_addresses(str(record.get("reply") or "")),
        "deleted": note,
    }
