"""The delivery event log: one Redis stream entry per recipient state change, written by the same
Lua script as the status record it reflects, so neither exists without the other.

Key:
    mailroom:events   stream; each entry's fields: type, message_id, recipient, destination,
                      attempt, code, enhanced, text, step, mx_host, tls ("1", "0" or ""),
                      labels (the message's tags and metadata as JSON, "" when none)

Types: queued (the producer's record), delivered, deferred (each attempt), bounced, expired,
suppressed (the workers' records), replayed (`dlq replay`), deleted (`queue delete`). A throttle
is no attempt and writes none. The stream is trimmed to about EVENTS_MAXLEN entries (`XADD
MAXLEN ~`); 0 writes no event at all. The entry id is the event id: unique, and the same each
time the entry is read, so consumers drop duplicates by it; its milliseconds are the timestamp.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from settings.webhooks import EVENT_TYPES
from workers.queue.redis_text import redis_text

EVENTS_KEY = "mailroom:events"
DEFAULT_MAXLEN = 100_000
TYPES = EVENT_TYPES
_MSG_PREFIX = len("mailroom:msg:")

# Prepended to every script that writes events. `emit` appends one entry unless `maxlen` is 0;
# `labels_of` reads a message's tags and metadata once per script call.
LUA = f"""
local function emit(stream, maxlen, labels, kind, msg, recipient, destination, attempt, code,
                    enhanced, text, step, host, tls)
  if maxlen > 0 then
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', kind,
      'message_id', string.sub(msg, {_MSG_PREFIX + 1}), 'recipient', recipient,
      'destination', destination, 'attempt', attempt, 'code', code, 'enhanced', enhanced,
      'text', text, 'step', step, 'mx_host', host, 'tls', tls, 'labels', labels)
  end
end
local function labels_of(msg, maxlen)
  if maxlen == 0 then return '' end
  return redis.call('HGET', msg, 'labels') or ''
end
"""


def event_json(entry_id: bytes | str, fields: Mapping[Any, Any]) -> dict[str, Any]:
    """An entry as the contract shows an event (docs/contract.md §4)."""
    text = {redis_text(key): redis_text(value) for key, value in fields.items()}
    event_id = redis_text(entry_id)
    labels = json.loads(text["labels"]) if text.get("labels") else {}
    code = text.get("code", "")
    tls = text.get("tls", "")
    return {
        "event_id": event_id,
        "type": text.get("type", ""),
        "timestamp": timestamp_of(event_id),
        "message_id": text.get("message_id", ""),
        "recipient": text.get("recipient", ""),
        "destination": text.get("destination", ""),
        "attempt": int(text["attempt"]) if text.get("attempt") else None,
        "reply": {
            "code": int(code) if code else None,
            "enhanced": text.get("enhanced", ""),
            "text": text.get("text", ""),
        },
        "step": text.get("step") or None,
        "mx_host": text.get("mx_host") or None,
        "tls": None if tls == "" else tls == "1",
        "tags": list(labels.get("tags", [])),
        "metadata": dict(labels.get("metadata", {})),
    }


def written_at(event_id: str) -> float:
    """When the event was written, as UNIX time: its id's milliseconds (Redis's clock)."""
    return int(event_id.partition("-")[0]) / 1000


def timestamp_of(event_id: str) -> str:
    """When the event was written, ISO-8601 in UTC with milliseconds."""
    moment = datetime.fromtimestamp(written_at(event_id), UTC)
    return moment.isoformat(timespec="milliseconds")


def events_of(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """The events of XRANGE / XREAD(GROUP) entries: (id, fields) pairs."""
    return [event_json(entry_id, fields) for entry_id, fields in entries]


class EventLog:
    """Reads the stream: pages from a point, and waits for what comes after."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def page(self, after: str, count: int) -> list[dict[str, Any]]:
        """Up to `count` events after the id `after` ("0-0": from the oldest), oldest first."""
        entries: Sequence[Any] = self._redis.xrange(  # type: ignore[assignment]
            EVENTS_KEY, min=f"({after}", max="+", count=count
        )
        return events_of(entries)

    def wait(self, after: str, block_seconds: float, count: int) -> list[dict[str, Any]]:
        """Events written after `after`, waiting up to `block_seconds` for the first."""
        replies: Sequence[Any] = self._redis.xread(  # type: ignore[assignment]
            {EVENTS_KEY: after}, count=count, block=max(int(block_seconds * 1000), 1)
        )
        return [event for _, entries in replies or [] for event in events_of(entries)]

    def last_id(self) -> str:
        """The newest event's id ("0-0" when there is none)."""
        newest: Sequence[Any] = self._redis.xrevrange(EVENTS_KEY, count=1)  # type: ignore[assignment]
        return redis_text(newest[0][0]) if newest else "0-0"
