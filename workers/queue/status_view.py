"""A status record as `mailroom status --json` shows it: recipients sorted by address, attempts
oldest first, addresses quoted in reply texts cut down to their domain."""

from __future__ import annotations

import json
from typing import Any

import redis

from workers.model.redaction import redact_addresses
from workers.model.states import RecipientState
from workers.queue.redis_text import redis_text
from workers.queue.status_states import message_state, record_keys

# Recipient fields only a deferred recipient has: why the gate held it back (only when it did)
# and when it is due again.
_WHEN_DEFERRED = ("throttled", "next_attempt")


def read_view(client: redis.Redis, message_id: str) -> dict[str, Any] | None:
    """The record of `message_id` in the shape of `mailroom status --json`, or None when there
    is none. A recipient's address is in its own "address" field only."""
    msg, rcpt, _, attempts = record_keys(message_id)
    pipe = client.pipeline(transaction=True)
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


def _redacted_attempt(attempt: dict[str, Any]) -> dict[str, Any]:
    for step in attempt.get("steps", ()):
        if isinstance(step.get("text"), str):
            step["text"] = redact_addresses(step["text"])
    return attempt
