"""A status record as `mailroom status --json` shows it: recipients sorted by address, attempts
oldest first, addresses quoted in reply texts cut down to their domain."""

from __future__ import annotations

import json
from email import policy
from email.parser import BytesHeaderParser
from typing import Any

import redis

from workers.model.redaction import redact_addresses
from workers.model.states import RecipientState
from workers.queue.content import content_key
from workers.queue.redis_text import redis_text
from workers.queue.status_states import iso_time, message_state, record_keys

# KEYS: a content key. Returns the start of the message (its header, as a rule), so showing a
# subject never moves a 25 MiB body over the wire.
_HEAD = "return string.sub(redis.call('HGET', KEYS[1], 'data') or '', 1, 16384)"

# Recipient fields only some recipients have: a deferred one, why the gate held it back (only
# when it did) and when it is due again; a deleted one, who deleted it when.
_WHEN_DEFERRED = ("throttled", "next_attempt", "deleted")


def read_view(client: redis.Redis, message_id: str) -> dict[str, Any] | None:
    """The record of `message_id` in the shape of `mailroom status --json`, or None when there
    is none. A recipient's address is in its own "address" field only."""
    msg, rcpt, _, attempts = record_keys(message_id)
    pipe = client.pipeline(transaction=True)
    pipe.hget(msg, "created")
    pipe.hgetall(rcpt)
    pipe.lrange(attempts, 0, -1)
    pipe.eval(_HEAD, 1, content_key(message_id))
    created, entries, attempt_values, head = pipe.execute()
    if created is None:
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
        "created": iso_time(float(created)),
        "subject": _subject(head),
    }


def _subject(head: bytes | str) -> str | None:
    """The Subject of a message from its first bytes; None once the content is gone."""
    data = head.encode() if isinstance(head, str) else head
    if not data:
        return None
    header = data.split(b"\r\n\r\n", 1)[0]
    parsed = BytesHeaderParser(policy=policy.default).parsebytes(header + b"\r\n\r\n")
    subject = parsed.get("subject")
    return None if subject is None else str(subject)


def _redacted_attempt(attempt: dict[str, Any]) -> dict[str, Any]:
    for step in attempt.get("steps", ()):
        if isinstance(step.get("text"), str):
            step["text"] = redact_addresses(step["text"])
    return attempt
