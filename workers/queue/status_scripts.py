"""The Lua scripts of the status store: every write that must be atomic (creating records,
recording results, the gate's deferrals, requeueing, taking over enqueueing) runs inside Redis,
so two workers at once can never move a recipient's state backwards."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from workers.model.states import RecipientState
from workers.queue import events
from workers.queue.status_states import TRANSITIONS, Record, iso_time, record_keys

# (message id, sender, recipients) or, with the labels JSON (tags and metadata), a fourth item.
Messages = Sequence[tuple[str, str, Mapping[str, str]] | tuple[str, str, Mapping[str, str], str]]


def _lua_transitions() -> str:
    rows = (
        f"{current}={{{','.join(f'{new}=true' for new in sorted(targets))}}}"
        for current, targets in TRANSITIONS.items()
    )
    return "{" + ",".join(rows) + "}"


# KEYS: msg, rcpt, dlv, attempts, the event stream. ARGV: ttl, attempts kept, next attempt (""
# for none), its due time (ISO-8601, "" for none), events maxlen, the attempt's number, server
# and TLS ("1", "0", ""), the number n of attempt records, n attempt JSONs, then (address, state,
# code, enhanced, reply, step) per recipient. A recipient moved to deferred gets the due time as
# "next_attempt"; every recipient moved loses "throttled" (a real attempt's reply replaces the
# gate's) and gets an event named after its new state. Returns the refused moves as a flat list:
# address, current state, new state.
# dlv's "attempt" is replaced textually: decoding and re-encoding with cjson would round
# first_queued to 14 digits.
RECORD = (
    events.LUA
    + f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {{}} end
local allowed = {_lua_transitions()}
local maxlen = tonumber(ARGV[5])
local labels = labels_of(KEYS[1], maxlen)
local n = tonumber(ARGV[9])
local refused, destinations = {{}}, {{}}
for i = 10 + n, #ARGV, 6 do
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
      emit(KEYS[5], maxlen, labels, state, KEYS[1], address, rec.destination, ARGV[6],
        ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[7], ARGV[8])
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
for i = 10, 9 + n do redis.call('RPUSH', KEYS[4], ARGV[i]) end
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[2]), -1)
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return refused
"""
)

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

# KEYS: msg, rcpt, dlv, attempts, the event stream. ARGV: destination, now (JSON number), ttl,
# events maxlen. Returns the addresses put back to queued (bounced, expired, or deleted by an
# operator), each with a `replayed` event.
REQUEUE = (
    events.LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local maxlen = tonumber(ARGV[4])
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
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
  local labels = labels_of(KEYS[1], maxlen)
  for _, address in ipairs(requeued) do
    emit(KEYS[5], maxlen, labels, 'replayed', KEYS[1], address, ARGV[1], attempt, '', '', '',
      '', '', '')
  end
end
return requeued
"""
)


# KEYS: msg, rcpt, dlv, attempts of each message, then the event stream. ARGV: ttl, created,
# claim, events maxlen, then per message: sender, labels (tags and metadata JSON, "" for none),
# n, n pairs (address, recipient JSON), m, m pairs (destination, delivery JSON). HSET takes the
# pairs 500 at a time: Lua's unpack has a stack limit of a few thousand values. A message whose
# record exists is left as it is (a racing producer wrote it, and its recipients may have moved
# on since). Each recipient of a created record gets a `queued` event. Returns the indexes (from
# 1) of the messages created.
CREATE = (
    events.LUA
    + """
local function hset_pairs(key, first, count)
  for done = 0, count - 1, 500 do
    local last = math.min(count, done + 500)
    redis.call('HSET', key, unpack(ARGV, first + 2 * done, first + 2 * last - 1))
  end
end
local stream, maxlen = KEYS[#KEYS], tonumber(ARGV[4])
local at, created = 5, {}
for i = 1, #KEYS - 1, 4 do
  local msg, rcpt, dlv = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local labels = ARGV[at + 1]
  local n = tonumber(ARGV[at + 2])
  local m = tonumber(ARGV[at + 3 + 2 * n])
  if redis.call('EXISTS', msg) == 0 then
    redis.call('DEL', rcpt, dlv, KEYS[i + 3])
    redis.call('HSET', msg, 'created', ARGV[2], 'sender', ARGV[at], 'claim', ARGV[3])
    if labels ~= '' then redis.call('HSET', msg, 'labels', labels) end
    hset_pairs(rcpt, at + 3, n)
    hset_pairs(dlv, at + 4 + 2 * n, m)
    redis.call('EXPIRE', msg, ARGV[1])
    redis.call('EXPIRE', rcpt, ARGV[1])
    redis.call('EXPIRE', dlv, ARGV[1])
    table.insert(created, (i + 3) / 4)
    if maxlen > 0 then
      for j = at + 3, at + 2 + 2 * n, 2 do
        local destination = cjson.decode(ARGV[j + 1]).destination
        emit(stream, maxlen, labels, 'queued', msg, ARGV[j], destination, 1, '', '', '', '', '',
          '')
      end
    end
  end
  at = at + 4 + 2 * n + 2 * m
end
return created
"""
)

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
    messages: Messages, now: float, ttl: int, claim: str, events_maxlen: int
) -> tuple[list[str], list[str | int]]:
    """The keys and arguments of one CREATE call for `messages` (id, sender, recipients, and
    optionally the labels JSON: tags and metadata).

    :raises ValueError: a message without recipients.
    """
    # The JSON is written from templates: json.dumps per recipient was most of the cost.
    # The bytes are what _dumps writes ("attempt" must stay compact: RECORD edits it).
    delivery = '{"attempt":1,"first_queued":' + _dumps(now) + "}"
    queued: dict[str, str] = {}
    keys: list[str] = []
    args: list[str | int] = [ttl, repr(now), claim, events_maxlen]
    for message_id, sender, recipients, *labels in messages:
        if not recipients:
            raise ValueError("a message needs at least one recipient")
        keys += record_keys(message_id)
        args += [sender, labels[0] if labels else "", len(recipients)]
        for address, destination in recipients.items():
            record = queued.get(destination)
            if record is None:
                record = queued[destination] = _queued_record(destination)
            args += [address, record]
        destinations = dict.fromkeys(recipients.values())
        args.append(len(destinations))
        for destination in destinations:
            args += [destination, delivery]
    keys.append(events.EVENTS_KEY)
    return keys, args


def record_arguments(
    record: Record, ttl: int, attempts_kept: int, events_maxlen: int
) -> list[str | int]:
    """The arguments of one RECORD call for one delivery's results."""
    tls = "" if record.tls is None else "1" if record.tls else "0"
    arguments: list[str | int] = [
        ttl,
        attempts_kept,
        "" if record.next_attempt is None else int(record.next_attempt),
        "" if record.due is None else iso_time(record.due),
        events_maxlen,
        record.attempt,
        record.host,
        tls,
        len(record.attempts),
    ]
    arguments += [_dumps(attempt) for attempt in record.attempts]
    for address, (state, reply) in record.outcomes.items():
        arguments += [address, RecipientState(state).value, int(reply.code)]
        arguments += [reply.enhanced, reply.text, reply.step.value]
    return arguments


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _queued_record(destination: str) -> str:
    """A new recipient's JSON: `_dumps` of the record `create` writes, from a template."""
    return (
        '{"destination":' + _dumps(destination) + ',"state":"queued",'
        '"code":null,"enhanced":"","reply":""}'
    )
