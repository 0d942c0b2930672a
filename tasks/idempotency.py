"""Idempotency keys: `mailroom:idem:{sha256(key)}` → the message id that took the key, for
IDEMPOTENCY_TTL seconds; taken with SET NX and read back in the same pipeline, so two producers
racing with one key get one message id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import redis


def claim_keys(
    client: redis.Redis, ttl: int, claims: Sequence[tuple[str | None, str]]
) -> list[str | None]:
    """Take each (idempotency key, fresh id); per claim, the id that held the key before.

    None for a claim without a key, or whose key was free (now taken for its fresh id).
    """
    holders: list[str | None] = [None] * len(claims)
    keyed = [(index, key, fresh) for index, (key, fresh) in enumerate(claims) if key]
    if not keyed:
        return holders
    with client.pipeline(transaction=False) as pipe:
        for _, key, fresh in keyed:
            name = "mailroom:idem:" + hashlib.sha256(key.encode()).hexdigest()
            pipe.set(name, fresh, nx=True, ex=ttl)
            # Read back in the same pipeline: nothing but expiry replaces a key set NX.
            pipe.get(name)
        replies = pipe.execute()
    for (index, _, fresh), holder in zip(keyed, replies[1::2], strict=True):
        if isinstance(holder, bytes) and holder.decode() != fresh:
            holders[index] = holder.decode()
    return holders
