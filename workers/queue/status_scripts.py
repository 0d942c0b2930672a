"""The Lua scripts of the status store: every write that must be atomic (creating records,
recording results, the gate's deferrals, requeueing, taking over enqueueing) runs inside Redis,
so two workers at once can never move a recipient's state backwards."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from workers.model.states import RecipientState
from workers.queue.status_states import TRANSITIONS, Record, iso_time, record_keys

Messages = Sequence[tuple[str, str, Mapping[str, str]]]


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
RECORD = f"""
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
THROTTLE = """
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
# Returns the addresses put back to queued (bounced, expired, or deleted by an operator).
REQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local entries = redis.call('HGETALL', KEYS[2])
local requeued = {}
for i = 1, #entries, 2 do
  local rec = cjson.decode(entries[i + 1])
  local dead = rec.state == 'bounced' or rec.state == 'expired' or rec.state == 'deleted'
  if rec.destination == ARGV[1] and dead then
    rec.state, rec.deleted = 'queued', nil
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
CREATE = """
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

# KEYS: the suppression list (workers.queue.suppression), then dlv and rcpt of each delivery.
# ARGV: each delivery's destination. Returns, per delivery: its dlv field (nil: none), its
# recipients hash as a flat list, and the list's entry for each of those addresses (ASCII letters
# lower-cased, as `list_key` folds them), nil where there is none. An empty list costs one EXISTS.
CLAIMS = """
local listed = redis.call('EXISTS', KEYS[1]) == 1
local out = {}
for i = 2, #KEYS, 2 do
  local rcpt = redis.call('HGETALL', KEYS[i + 1])
  local hits = {}
  if listed then
    for j = 1, #rcpt, 2 do
      hits[#hits + 1] = redis.call('HGET', KEYS[1], string.lower(rcpt[j]))
    end
  end
  out[#out + 1] = {redis.call('HGET', KEYS[i], ARGV[i / 2]), rcpt, hits}
end
return out
"""

# KEYS: msg. ARGV: the claim seen, a new claim. Takes over enqueueing a message whose producer
# never marked it enqueued: only if nobody did, and nobody else took it over since (compare and
# set), so of many waiting producers exactly one takes it. Returns 1 when taken.
TAKE_OVER = """
local claim = redis.call('HMGET', KEYS[1], 'enqueued', 'claim')
if claim[1] == '1' or (claim[2] or '') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'claim', ARGV[2])
return 1
"""

# KEYS: the msg key of each message. Marks existing records only, so an expired one is not
# brought back without a TTL. Returns how many were marked.
MARK_ENQUEUED = """
local marked = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'enqueued', '1')
    marked = marked + 1
  end
end
return marked
"""


def create_arguments(
    messages: Messages, now: float, ttl: int, claim: str
) -> tuple[list[str], list[str | int]]:
    """The keys and arguments of one CREATE call for `messages` (id, sender, recipients).

    :raises ValueError: a message without recipients.
    """
    # The JSON is written from templates: json.dumps per recipient was most of the cost.
    # The bytes are what _dumps writes ("attempt" must stay compact: RECORD edits it).
    delivery = '{"attempt":1,"first_queued":' + _dumps(now) + "}"
    queued: dict[str, str] = {}
    keys: list[str] = []
    args: list[str | int] = [ttl, repr(now), claim]
    for message_id, sender, recipients in messages:
        if not recipients:
            raise ValueError("a message needs at least one recipient")
        keys += record_keys(message_id)
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
    return keys, args


def record_arguments(record: Record, ttl: int, attempts_kept: int) -> list[str | int]:
    """The arguments of one RECORD call for one delivery's results."""
    _, outcome_by_address, attempt_json, next_attempt, due = record
    arguments: list[str | int] = [
        ttl,
        attempts_kept,
        "" if next_attempt is None else int(next_attempt),
        "" if due is None else iso_time(due),
        len(attempt_json),
    ]
    arguments += [_dumps(attempt) for attempt in attempt_json]
    for address, (state, reply) in outcome_by_address.items():
        arguments += [address, RecipientState(state).value, int(reply.code)]
        arguments += [reply.enhanced, reply.text]
    return arguments


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _queued_record(destination: str) -> str:
    """A new recipient's JSON: `_dumps` of the record `create` writes, from a template."""
    return (
        '{"destination":' + _dumps(destination) + ',"state":"queued",'
        '"code":null,"enhanced":"","reply":""}'
    )
