"""The dead-letter queue: deliveries that bounced or expired, kept for operators to inspect.

One entry per delivery (message id, destination), holding why it died and each dead
recipient's last reply. Entries are listed newest first, shown per message, taken for replay,
purged, and pruned once older than `ttl` (DEAD_LETTER_TTL; dramatiq's `.XQ` with
`dead_message_ttl`, rq's `FailedJobRegistry`): every worker's sweeper calls `prune`, and the
queue's keys EXPIRE `ttl` after the newest entry. A dead letter keeps its message's content and
status record at least `ttl` seconds too, so a replay finds them. A second death of the same
delivery (after a replay, or a later recipient) merges into its entry: recipients by address,
the latest reason and time win.

Keys:
    mailroom:dlq           zset member "{message_id}|{destination}", score UNIX time dead-lettered
    mailroom:dlq:entries   hash member → JSON {"message_id","destination","reason",
                           "recipients": [{"address","code","enhanced","reply","reason"}],"at"}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import redis

from workers.model.redaction import redact_addresses
from workers.model.reply import Reply
from workers.queue.content import content_key
from workers.queue.status import iso_time, record_keys

DLQ_KEY = "mailroom:dlq"
ENTRIES_KEY = "mailroom:dlq:entries"
_SEPARATOR = "|"
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_MERGE_TRIES = 50

Entry = dict[str, Any]  # one dead-letter entry, as `mailroom dlq list --json` prints it
_Entries = list[Entry]  # spelled once here: the method `list` shadows the builtin in the class
_Members = list[bytes | str]

# KEYS: dlq, entries, then the message's content and status record keys. ARGV: member, the
# entry read before ("" for none), new entry, score, ttl. Writes only if the entry is still the
# one read (compare and set); returns 1 if written. The queue expires `ttl` after its newest
# entry (older ones are pruned), and the message's records live at least as long, so a replay
# finds them.
_PUT_IF_UNCHANGED = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
local ttl = tonumber(ARGV[5])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
for i = 3, #KEYS do
  local left = redis.call('TTL', KEYS[i])
  if left ~= -2 and left < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"""

# KEYS: dlq, entries. ARGV: members. Removes them; returns the entries that were still there.
_TAKE = """
local taken = {}
for _, member in ipairs(ARGV) do
  local entry = redis.call('HGET', KEYS[2], member)
  if entry then
    redis.call('HDEL', KEYS[2], member)
    redis.call('ZREM', KEYS[1], member)
    table.insert(taken, entry)
  end
end
return taken
"""

# KEYS: dlq, entries. ARGV: cutoff. Removes entries dead-lettered before it; returns how many.
_PRUNE = """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
for _, member in ipairs(old) do
  redis.call('HDEL', KEYS[2], member)
  redis.call('ZREM', KEYS[1], member)
end
return #old
"""


class DeadReason(StrEnum):
    """Why a delivery ended in the dead-letter queue."""

    BOUNCED = "bounced"  # a permanent failure (5xx, NXDOMAIN, null MX)
    EXPIRED = "expired"  # still deferred when MAX_AGE ran out
    DELETED = "deleted"  # taken out of the queue by an operator (`mailroom queue delete`)


def dead_recipient(address: str, reply: Reply) -> dict[str, Any]:
    """One recipient as a dead-letter entry lists it: address and its last reply, in which an
    address the server quoted keeps only its domain (the entry's own address says whose)."""
    return {
        "address": address,
        "code": int(reply.code),
        "enhanced": reply.enhanced,
        "reply": redact_addresses(reply.text),
    }


def _member(message_id: str, destination: str) -> str:
    if _SEPARATOR in message_id or _SEPARATOR in destination:
        raise ValueError(f"message id and destination must not contain {_SEPARATOR!r}")
    return f"{message_id}{_SEPARATOR}{destination}"


class DeadLetters:
    """The dead-letter queue of bounced and expired deliveries."""

    def __init__(self, redis: redis.Redis, ttl: int) -> None:
        if ttl <= 0:
            raise ValueError(f"dead-letter ttl must be a positive number of seconds, got {ttl}")
        self._redis = redis
        self._ttl = ttl
        self._put_if_unchanged = redis.register_script(_PUT_IF_UNCHANGED)
        self._take = redis.register_script(_TAKE)
        self._prune = redis.register_script(_PRUNE)

    def add(
        self,
        message_id: str,
        destination: str,
        reason: DeadReason | str,
        recipients: Sequence[Mapping[str, Any]],
        now: float,
    ) -> None:
        """Dead-letter a delivery's recipients (dicts as `dead_recipient` makes them).

        Each recipient keeps the `reason` it died for. If the delivery already has an entry,
        recipients are merged by address (the newer one wins) and the entry takes this
        `reason` and time.

        :raises ValueError: an unknown reason or a time that is not finite.
        """
        reason = DeadReason(reason)
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        member = _member(message_id, destination)
        arriving = [{**recipient, "reason": reason.value} for recipient in recipients]
        for _ in range(_MERGE_TRIES):
            current = self._redis.hget(ENTRIES_KEY, member)
            merged: dict[str, dict[str, Any]] = {}
            if current is not None:
                merged = {r["address"]: r for r in json.loads(current)["recipients"]}
            merged.update((r["address"], r) for r in arriving)
            entry = {
                "message_id": message_id,
                "destination": destination,
                "reason": reason.value,
                "recipients": sorted(merged.values(), key=lambda r: str(r["address"])),
                "at": iso_time(now),
            }
            written = self._put_if_unchanged(
                keys=[DLQ_KEY, ENTRIES_KEY, content_key(message_id), *record_keys(message_id)],
                args=[
                    member,
                    current or "",
                    json.dumps(entry, separators=(",", ":")),
                    now,
                    self._ttl,
                ],
            )
            if written:
                return
        raise RuntimeError(f"dead letter {member} kept changing; gave up after {_MERGE_TRIES}")

    def list(self, limit: int = 1000) -> _Entries:
        """Up to `limit` entries, newest first."""
        if limit < 1:
            return []
        newest = self._redis.zrevrange(DLQ_KEY, 0, limit - 1)
        return self._entries([m for m in newest if isinstance(m, bytes | str)])

    def _entries(self, members: Sequence[bytes | str]) -> _Entries:
        if not members:
            return []
        values = self._redis.hmget(ENTRIES_KEY, list(members))
        return [json.loads(value) for value in values if value is not None]

    def _members_of(self, message_id: str) -> _Members:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", _member(message_id, "")) + "*"
        return [member for member, _ in self._redis.hscan_iter(ENTRIES_KEY, match=pattern)]

    def show(self, message_id: str) -> _Entries:
        """Every entry of one message, newest first ([] when it has none)."""
        return _newest_first(self._entries(self._members_of(message_id)))

    def take(self, message_id: str) -> _Entries:
        """Remove every entry of one message and return them, newest first (for replay).

        Atomic per entry: of two callers taking at once, each entry goes to only one.
        """
        members = self._members_of(message_id)
        if not members:
            return []
        taken = self._take(keys=[DLQ_KEY, ENTRIES_KEY], args=members)
        return _newest_first([json.loads(value) for value in taken])

    def purge(self, message_id: str) -> int:
        """Delete every entry of one message; returns how many were deleted."""
        return len(self.take(message_id))

    def count(self) -> int:
        """How many entries (dead deliveries) the queue holds."""
        return int(self._redis.zcard(DLQ_KEY))

    def prune(self, now: float) -> int:
        """Delete entries dead-lettered more than `ttl` seconds before `now`; returns how many."""
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        return int(self._prune(keys=[DLQ_KEY, ENTRIES_KEY], args=[now - self._ttl]))


def _newest_first(entries: _Entries) -> _Entries:
    # ISO-8601 in UTC with a fixed number of digits sorts as time does.
    return sorted(
        entries, key=lambda entry: (str(entry["at"]), str(entry["destination"])), reverse=True
    )
