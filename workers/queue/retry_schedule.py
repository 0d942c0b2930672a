"""When to try a deferred delivery again, or that it has run out of time: a pure function.

Backoff follows the operator's `RETRY_DELAYS` (the last delay repeats), spread by uniform jitter
so deliveries deferred together do not come back together (dramatiq's `compute_backoff`). A
throttled delivery comes back exactly at the limiter's `retry_after`, never earlier. Every
delivery has a deadline, `first_queued + max_age` (KumoMTA's `max_age`, Postfix's
`maximal_queue_lifetime`): once reached the delivery expires; a retry due after it is pulled in
to the deadline itself, so the last try happens at the deadline rather than being skipped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

_RANDOM = random.Random()


@dataclass(frozen=True)
class RetryPolicy:
    """The operator's retry schedule: `delays` in seconds per attempt (the last repeats), each
    spread by up to `jitter * delay` drawn from `rng` (a shared one when None), and `max_age`,
    the seconds after first being queued at which a delivery expires."""

    delays: Sequence[int]
    max_age: float
    jitter: float = 0.1
    rng: random.Random | None = None


def next_due(
    policy: RetryPolicy,
    *,
    attempt: int,
    first_queued: float,
    now: float,
    retry_after: float | None = None,
) -> float | None:
    """Return the UNIX time the delivery is due again, or None when it has expired.

    `attempt` is the number of attempts made so far (1 after the first). The delay is
    `delays[attempt - 1]` (the last one for every later attempt) plus or minus up to
    `jitter * delay`, drawn from `rng`; with `retry_after` (a throttle's answer) the delay is
    `retry_after` itself. The result never passes the deadline `first_queued + max_age`, and
    is None once `now` has reached it.

    :raises ValueError: `attempt` below 1, no `delays`, a negative delay, `jitter` outside
        [0, 1), a negative `retry_after`, or a time that is not finite.
    """
    delays, max_age, jitter = policy.delays, policy.max_age, policy.jitter
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, got {attempt}")
    if not delays or min(delays) < 0:
        raise ValueError(f"delays must be a non-empty list of seconds >= 0, got {list(delays)}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if retry_after is not None and retry_after < 0:
        raise ValueError(f"retry_after must be >= 0, got {retry_after}")
    if not all(math.isfinite(value) for value in (first_queued, now, max_age)):
        raise ValueError("first_queued, now and max_age must be finite")
    deadline = first_queued + max_age
    if now >= deadline:
        return None
    if retry_after is not None:
        delay = retry_after
    else:
        base = delays[min(attempt, len(delays)) - 1]
        spread = jitter * base
        delay = base + (policy.rng or _RANDOM).uniform(-spread, spread)
    return min(now + delay, deadline)
