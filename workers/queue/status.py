"""Each message's status record, and the one place recipient states change.

A recipient's state only moves forward: queued → deferred | delivered | bounced | expired,
deferred → the same four, and delivered, bounced and expired are final. The one way back is
`requeue` (an operator replaying dead letters), which turns bounced or expired recipients of one
destination into queued ones with a fresh age. Transitions are checked inside Redis (Lua), so
two workers recording at once cannot move a state backwards; an illegal one is skipped and
logged. The message's own state is derived from its recipients' (`message_state`).

Keys (every one EXPIREs after `ttl`, refreshed on each write):
    mailroom:msg:{id}        hash {created: UNIX time, sender, enqueued: "1" once on its queues,
                             claim: token of the producer that enqueues it}
    mailroom:rcpt:{id}       hash address → JSON {"destination","state","code","enhanced","reply"}
    mailroom:dlv:{id}        hash destination → JSON {"attempt": int, "first_queued": UNIX time}
    mailroom:attempts:{id}   list of attempt JSON objects, the newest 100 kept
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
from redis.client import Pipeline

from workers.model.redaction import redact_addresses
from workers.model.reply import Reply
from workers.model.states import RecipientState
from workers.queue.redis_text import redis_text

ATTEMPTS_KEPT = 100
# Recipient fields only a deferred recipient has: why the gate held it back (only when it did)
# and when it is due again.
_WHEN_DEFERRED = ("throttled", "next_attempt")

_log = logging.getLogger(__name__)


class MessageState(StrEnum):
    """A message's state, derived from its recipients' states."""

    QUEUED = "queued"  # every recipient queued
    IN_PROGRESS = "in_progress"  # some recipient tried and not final, or a mix not yet final
    DELIVERED = "delivered"  # every recipient delivered
    PARTIALLY_DELIVERED = "partially_delivered"  # all final, some delivered, some not
    FAILED = "failed"  # all final, none delivered


FINAL_STATES = frozenset({RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.EXPIRED})
_ONWARD = frozenset({RecipientState.DEFERRED, *FINAL_STATES})
TRANSITIONS: Mapping[RecipientState, frozenset[RecipientState]] = {
    RecipientState.QUEUED: _ONWARD,
    RecipientState.DEFERRED: _ONWARD,
    RecipientState.DELIVERED: frozenset(),
    RecipientState.BOUNCED: frozenset(),
    RecipientState.EXPIRED: frozenset(),
}
_REQUEUEABLE = (RecipientState.BOUNCED, RecipientState.EXPIRED)


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


def _lua_transitions() -> str:
    rows = (
        f"{current}={{{','.join(f'{new}=true' for new in sorted(targets))}}}"
        for current, targets in TRANSITIONS.items()
    )
    return "{" + ",".join(rows) + "}"


# KEYS: msg, rcpt, dlv, attempts. ARGV: ttl, attempts kept, next attempt ("" for none), its
# due time (ISO-8601, "" for none), the number n of attempt records, n attempt JSONs, then
# (address, state, code, enhanced, reply) per recipient. A recipient moved to deferred gets the
# due time as "next_attempt"; every recipient moved loses "throttled" (a real attempt's reply
# replaces the gate's). Returns the refused moves as a flat list: address, current state, new
# state.
# dlv's "attempt" is replaced textually: decoding and re-encoding with cjson would round
# first_queued to 14 digits.
_RECORD = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {{}} end
local allowed = {_lua_transitions()}
local n = tonumber(ARGV[5])
local refused, destinations = {{}}, {{}}
for i = 6 + n, #ARGV, 5 do
  local address, state = ARGV[i], ARGV[i + 1]
  local current = redis.call('HGET', KEYS[2], address)
  if not current then
    table.insert(refused, address); table.insert(refused, ''); table.insert(refused, state)
  else
    local rec = cjson.decode(current)
    destinations[rec.destination] = true
    if allowed[rec.state] and allowed[rec.state][state] then
      rec.state, rec.code = state, tonumber(ARGV[i + 2])
      rec.enhanced, rec.reply = ARGV[i + 3], ARGV[i + 4]
      rec.throttled, rec.next_attempt = nil, nil
      if state == 'deferred' and ARGV[4] ~= '' then rec.next_attempt = ARGV[4] end
      redis.call('HSET', KEYS[2], address, cjson.encode(rec))
    else
      table.insert(refused, address); table.insert(refused, rec.state); table.insert(refused, state)
    end
  end
end
if ARGV[3] ~= '' then
  for destination in pairs(destinations) do
    local current = redis.call('HGET', KEYS[3], destination)
    if current then
      local updated = string.gsub(current, '"attempt":%d+', '"attempt":' .. ARGV[3], 1)
      redis.call('HSET', KEYS[3], destination, updated)
    end
  end
end
for i = 6, 5 + n do redis.call('RPUSH', KEYS[4], ARGV[i]) end
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[2]), -1)
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[1]) end
return refused
"""

# KEYS: msg, rcpt. ARGV: ttl, code, enhanced, text of the gate's reply, next attempt (ISO-8601),
# then the addresses the gate held back. Each one still queued or deferred becomes deferred with
# "throttled" (why) and "next_attempt"; its last reply stays a server's if it had one, else it
# becomes the gate's. No attempt is recorded: none was made.
_THROTTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local held = 0
for i = 6, #ARGV do
  local current = redis.call('HGET', KEYS[2], ARGV[i])
  if current then
    local rec = cjson.decode(current)
    if rec.state == 'queued' or rec.state == 'deferred' then
      rec.state = 'deferred'
      if rec.code == cjson.null or rec.code == nil or rec.enhanced == ARGV[3] then
        rec.code, rec.enhanced, rec.reply = tonumber(ARGV[2]), ARGV[3], ARGV[4]
      end
      rec.throttled, rec.next_attempt = ARGV[4], ARGV[5]
      redis.call('HSET', KEYS[2], ARGV[i], cjson.encode(rec))
      held = held + 1
    end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return held
"""

# KEYS: msg, rcpt, dlv, attempts. ARGV: destination, now (JSON number), ttl.
# Returns the addresses put back to queued.
_REQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local entries = redis.call('HGETALL', KEYS[2])
local requeued = {}
for i = 1, #entries, 2 do
  local rec = cjson.decode(entries[i + 1])
  if rec.destination == ARGV[1] and (rec.state == 'bounced' or rec.state == 'expired') then
    rec.state = 'queued'
    redis.call('HSET', KEYS[2], entries[i], cjson.encode(rec))
    table.insert(requeued, entries[i])
  end
end
if #requeued > 0 then
  local attempt = 1
  local current = redis.call('HGET', KEYS[3], ARGV[1])
  if current then attempt = cjson.decode(current).attempt + 1 end
  redis.call('HSET', KEYS[3], ARGV[1],
    string.format('{"attempt":%d,"first_queued":%s}', attempt, ARGV[2]))
  for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[3]) end
end
return requeued
"""


# KEYS: msg, rcpt, dlv, attempts of each message. ARGV: ttl, created, claim, then per message:
# sender, n, n pairs (address, recipient JSON), m, m pairs (destination, delivery JSON). HSET
# takes the pairs 500 at a time: Lua's unpack has a stack limit of a few thousand values. A
# message whose record exists is left as it is (a racing producer wrote it, and its recipients
# may have moved on since). Returns the indexes (from 1) of the messages created.
_CREATE = """
local function hset_pairs(key, first, count)
  for done = 0, count - 1, 500 do
    local last = math.min(count, done + 500)
    redis.call('HSET', key, unpack(ARGV, first + 2 * done, first + 2 * last - 1))
  end
end
local at, created = 4, {}
for i = 1, #KEYS, 4 do
  local msg, rcpt, dlv = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local n = tonumber(ARGV[at + 1])
  local m = tonumber(ARGV[at + 2 + 2 * n])
  if redis.call('EXISTS', msg) == 0 then
    redis.call('DEL', rcpt, dlv, KEYS[i + 3])
    redis.call('HSET', msg, 'created', ARGV[2], 'sender', ARGV[at], 'claim', ARGV[3])
    hset_pairs(rcpt, at + 2, n)
    hset_pairs(dlv, at + 3 + 2 * n, m)
    redis.call('EXPIRE', msg, ARGV[1])
    redis.call('EXPIRE', rcpt, ARGV[1])
    redis.call('EXPIRE', dlv, ARGV[1])
    table.insert(created, (i + 3) / 4)
  end
  at = at + 3 + 2 * n + 2 * m
end
return created
"""

# KEYS: msg. ARGV: the claim seen, a new claim. Takes over enqueueing a message whose producer
# never marked it enqueued: only if nobody did, and nobody else took it over since (compare and
# set), so of many waiting producers exactly one takes it. Returns 1 when taken.
_TAKE_OVER = """
local claim = redis.call('HMGET', KEYS[1], 'enqueued', 'claim')
if claim[1] == '1' or (claim[2] or '') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'claim', ARGV[2])
return 1
"""

# KEYS: the msg key of each message. Marks existing records only, so an expired one is not
# brought back without a TTL. Returns how many were marked.
_MARK_ENQUEUED = """
local marked = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'enqueued', '1')
    marked = marked + 1
  end
end
return marked
"""


# One delivery's results for `StatusStore.record`: message id, (state, reply) by address, the
# attempt records, the next attempt number (None: not rescheduled) and its due time (UNIX time,
# shown as deferred recipients' "next_attempt"; None: not known).
Record = tuple[
    str,
    Mapping[str, tuple["RecipientState", Reply]],
    Sequence[Mapping[str, Any]],
    int | None,
    float | None,
]


def record_keys(message_id: str) -> list[str]:
    """The keys of one message's status record: msg, rcpt, dlv, attempts."""
    return [
        f"mailroom:msg:{message_id}",
        f"mailroom:rcpt:{message_id}",
        f"mailroom:dlv:{message_id}",
        f"mailroom:attempts:{message_id}",
    ]


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _queued_record(destination: str) -> str:
    """A new recipient's JSON: `_dumps` of the record `create` writes, from a template."""
    return (
        '{"destination":' + _dumps(destination) + ',"state":"queued",'
        '"code":null,"enhanced":"","reply":""}'
    )


def _schedule(value: bytes | str | None) -> DeliveryState | None:
    """A delivery's schedule from its field in the deliveries hash (None: no such delivery)."""
    if value is None:
        return None
    record = json.loads(value)
    return DeliveryState(int(record["attempt"]), float(record["first_queued"]))


def _pending(entries: Mapping[Any, Any], destination: str) -> list[str]:
    """The addresses of `destination` still queued or deferred, from the recipients hash."""
    waiting = {RecipientState.QUEUED, RecipientState.DEFERRED}
    found = []
    for address, value in entries.items():
        recipient = json.loads(value)
        if recipient["destination"] == destination and recipient["state"] in waiting:
            found.append(redis_text(address))
    return sorted(found)


def _redacted_attempt(attempt: dict[str, Any]) -> dict[str, Any]:
    for step in attempt.get("steps", ()):
        if isinstance(step.get("text"), str):
            step["text"] = redact_addresses(step["text"])
    return attempt


class StatusStore:
    """Reads and writes status records; the only writer of recipient states."""

    def __init__(self, redis: redis.Redis, ttl: int) -> None:
        if ttl <= 0:
            raise ValueError(f"status ttl must be a positive number of seconds, got {ttl}")
        self._redis = redis
        self._ttl = ttl
        self._record = redis.register_script(_RECORD)
        self._requeue = redis.register_script(_REQUEUE)
        self._mark_enqueued = redis.register_script(_MARK_ENQUEUED)
        self._create = redis.register_script(_CREATE)
        self._take_over = redis.register_script(_TAKE_OVER)
        self._throttle = redis.register_script(_THROTTLE)

    @staticmethod
    def _keys(message_id: str) -> list[str]:
        return record_keys(message_id)

    def create(
        self,
        message_id: str,
        sender: str,
        recipients: Mapping[str, str],
        now: float,
        pipe: Pipeline | None = None,
    ) -> bool:
        """Record a new message: every recipient (address → destination) queued, attempt 1.

        False (and nothing written) when a record exists already. With `pipe`, the commands
        are queued on the caller's pipeline and run when the caller executes it.

        :raises ValueError: no recipients, or `now` not finite.
        """
        return bool(self.create_many([(message_id, sender, recipients)], now, pipe=pipe))

    def create_many(
        self,
        messages: Sequence[tuple[str, str, Mapping[str, str]]],
        now: float,
        pipe: Pipeline | None = None,
        *,
        claim: str = "",
    ) -> list[str]:
        """`create` for many (message id, sender, recipients) at once: one script call.

        Only records that do not exist yet are written, each holding `claim` (the creator's
        token, see `take_over`); an existing record is left as it is, so a producer racing
        another with the same id can never put delivered recipients back to queued. Returns
        the ids created; with `pipe`, the call is queued on the caller's pipeline (one MULTI
        can then hold the content too) and returns [] (`created_ids` reads the reply).

        :raises ValueError: a message without recipients, or `now` not finite.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        if not messages:
            return []
        # The JSON is written from templates: json.dumps per recipient was most of the cost.
        # The bytes are what _dumps writes ("attempt" must stay compact: _RECORD edits it).
        delivery = '{"attempt":1,"first_queued":' + _dumps(now) + "}"
        queued: dict[str, str] = {}
        keys: list[str] = []
        args: list[str | int] = [self._ttl, repr(now), claim]
        for message_id, sender, recipients in messages:
            if not recipients:
                raise ValueError("a message needs at least one recipient")
            keys += self._keys(message_id)
            args += [sender, len(recipients)]
            for address, destination in recipients.items():
                record = queued.get(destination)
                if record is None:
                    record = queued[destination] = _queued_record(destination)
                args += [address, record]
            destinations = dict.fromkeys(recipients.values())
            args.append(len(destinations))
            for destination in destinations:
                args += [destination, delivery]
        reply = self._create(keys=keys, args=args, client=pipe)
        if pipe is not None:
            return []
        return self.created_ids([message_id for message_id, *_ in messages], reply)

    @staticmethod
    def created_ids(message_ids: Sequence[str], reply: Sequence[int]) -> list[str]:
        """The ids `create_many` created, from its script's reply (indexes from 1)."""
        return [message_ids[int(index) - 1] for index in reply]

    def unmarked_claims(self, message_ids: Sequence[str]) -> list[str | None]:
        """Each message's claim while it is not marked enqueued; None once it is (or has no
        record): one round trip."""
        with self._redis.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hmget(self._keys(message_id)[0], ["created", "enqueued", "claim"])
            replies = pipe.execute()
        return [
            None if created is None or enqueued in (b"1", "1") else redis_text(claim or b"")
            for created, enqueued, claim in replies
        ]

    def take_over(self, message_id: str, seen: str, claim: str) -> bool:
        """Take over enqueueing a message still not marked enqueued, if its claim is still
        `seen`; True for exactly one of any number of callers that saw the same claim."""
        return bool(self._take_over(keys=[self._keys(message_id)[0]], args=[seen, claim]))

    def exists(self, message_id: str) -> bool:
        """Whether a status record exists (and has not expired) for `message_id`."""
        return bool(self._redis.exists(self._keys(message_id)[0]))

    def mark_all_enqueued(self, message_ids: Sequence[str]) -> int:
        """Note that the messages' deliveries are on their queues, in one round trip; returns how
        many of the ids were known."""
        if not message_ids:
            return 0
        keys = [self._keys(message_id)[0] for message_id in message_ids]
        return int(self._mark_enqueued(keys=keys))

    def delete(self, message_id: str) -> None:
        """Forget a message's status record entirely (a submit that failed part-way)."""
        self._redis.delete(*self._keys(message_id))

    def is_enqueued(self, message_id: str) -> bool:
        """Whether `mark_all_enqueued` was called for this (existing) message."""
        return self._redis.hget(self._keys(message_id)[0], "enqueued") in (b"1", "1")

    def progress(self, message_ids: Sequence[str]) -> list[bool | None]:
        """Where each message stands, in one round trip: None, no status record; else whether
        `mark_all_enqueued` was called for it."""
        with self._redis.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hmget(self._keys(message_id)[0], ["created", "enqueued"])
            replies = pipe.execute()
        return [
            None if created is None else enqueued in (b"1", "1") for created, enqueued in replies
        ]

    def claims(
        self, deliveries: Sequence[tuple[str, str]]
    ) -> list[tuple[DeliveryState | None, list[str]]]:
        """`delivery` of many (message_id, destination) pairs, each with the addresses of that
        destination still queued or deferred (sorted; [] for an unknown id), in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for message_id, destination in deliveries:
            keys = self._keys(message_id)
            pipe.hget(keys[2], destination)
            pipe.hgetall(keys[1])
        replies = pipe.execute()
        return [
            (_schedule(replies[2 * index]), _pending(replies[2 * index + 1], destination))
            for index, (_, destination) in enumerate(deliveries)
        ]

    def delivery(self, message_id: str, destination: str) -> DeliveryState | None:
        """The schedule of one delivery, or None when the message or destination is unknown."""
        return _schedule(self._redis.hget(self._keys(message_id)[2], destination))

    def record(
        self,
        message_id: str,
        outcome_by_address: Mapping[str, tuple[RecipientState, Reply]],
        attempt_json: Sequence[Mapping[str, Any]],
        next_attempt: int | None,
        due: float | None = None,
    ) -> None:
        """Apply one delivery's results in one atomic step.

        Sets each address's state and last reply (code, enhanced code, text) where the move is
        allowed (`can_transition`), appends the attempt records (the newest 100 are kept), and,
        when `next_attempt` is given, sets the attempt counter of the recipients' destination;
        `due` becomes the "next_attempt" time of recipients moved to deferred. Refused moves
        and unknown addresses are skipped and logged. Does nothing for an unknown
        or expired message.
        """
        self.record_many([(message_id, outcome_by_address, attempt_json, next_attempt, due)])

    def record_many(self, records: Sequence[Record]) -> None:
        """`record` for many deliveries in one round trip (each still one atomic script)."""
        if not records:
            return
        pipe = self._redis.pipeline(transaction=False)
        for message_id, outcome_by_address, attempt_json, next_attempt, due in records:
            arguments: list[str | int] = [
                self._ttl,
                ATTEMPTS_KEPT,
                "" if next_attempt is None else int(next_attempt),
                "" if due is None else iso_time(due),
                len(attempt_json),
            ]
            arguments += [_dumps(attempt) for attempt in attempt_json]
            for address, (state, reply) in outcome_by_address.items():
                arguments += [address, RecipientState(state).value, int(reply.code)]
                arguments += [reply.enhanced, reply.text]
            self._record(keys=self._keys(message_id), args=arguments, client=pipe)
        for (message_id, *_), refused in zip(records, pipe.execute(), strict=True):
            for i in range(0, len(refused), 3):
                address, current, new = (redis_text(value) for value in refused[i : i + 3])
                _log.warning(
                    "message %s: recipient %s not moved from %s to %s",
                    message_id,
                    address,
                    current or "(unknown recipient)",
                    new,
                )

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
        """Put the bounced and expired recipients of one delivery back to queued.

        The delivery gets a fresh `first_queued` (= `now`) and its attempt counter goes up by
        one. Returns the addresses requeued, sorted ([] when there were none).
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        requeued = self._requeue(
            keys=self._keys(message_id), args=[destination, repr(now), self._ttl]
        )
        return sorted(redis_text(address) for address in requeued)

    def view(self, message_id: str) -> dict[str, Any] | None:
        """The record in the shape of `mailroom status --json`, or None for an unknown id.

        Recipients are sorted by address; attempts are oldest first. A recipient's address is
        in its own "address" field only: addresses quoted in reply texts keep just their domain.
        """
        msg, rcpt, _, attempts = self._keys(message_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.exists(msg)
        pipe.hgetall(rcpt)
        pipe.lrange(attempts, 0, -1)
        found, entries, attempt_values = pipe.execute()
        if not found:
            return None
        recipients = sorted(
            (
                {"address": redis_text(address), **json.loads(value)}
                for address, value in entries.items()
            ),
            key=lambda record: str(record["address"]),
        )
        state = message_state(RecipientState(record["state"]) for record in recipients)
        return {
            "id": message_id,
            "state": state.value,
            "recipients": [
                {
                    "address": record["address"],
                    "destination": record["destination"],
                    "state": record["state"],
                    "code": record["code"],
                    "enhanced": record["enhanced"],
                    "reply": redact_addresses(record["reply"]),
                    **{key: record[key] for key in _WHEN_DEFERRED if key in record},
                }
                for record in recipients
            ],
            "attempts": [_redacted_attempt(json.loads(value)) for value in attempt_values],
        }
