"""What may hold a delivery back before any server is tried: the cluster-wide connection cap and
rate gate (`workers.traffic.rate_limits.Limiter`, blocking Redis calls run in the event loop's
executor), and the deferral a delivery gets when they say "not now" for too long.

Neither ever raises out of a delivery: one part of it may already be accepted, and a delivery
that raised would be deferred whole and that part sent twice. A Redis error is a "not now".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from redis import RedisError

from workers.model.outcome import Deferred, Outcome
from workers.model.reply import Code, Reply, Step
from workers.model.report import DeliveryReport, StepRecord
from workers.model.throttling import Granted, Throttled, ThrottleReason

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY = 1.0  # seconds before a delivery that found no connection (or no answer) is tried again


class ConnectionCap(Protocol):
    """The cluster-wide connection cap: blocking Redis calls."""

    def connection_lease(self, destination: str) -> Granted | Throttled: ...

    def release_lease(self, destination: str, lease: str) -> None: ...


class RateGate(Protocol):
    """The cluster-wide rate gate, asked for each further message of a delivery split into parts;
    a blocking Redis call."""

    def acquire(self, destination: str, delivery_key: str) -> Granted | Throttled: ...


class Unfailing:
    """The cap as the agent and its pool use it: asking for a lease while Redis fails is a
    "not now", and a lease that cannot be given back a warning (it expires by itself)."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap

    def connection_lease(self, destination: str) -> Granted | Throttled:
        try:
            return self._cap.connection_lease(destination)
        except RedisError as exc:
            log.warning("the connection cap of %s did not answer: %s", destination, exc)
            return Throttled(RETRY, ThrottleReason.CONNECTIONS)

    def release_lease(self, destination: str, lease: str) -> None:
        try:
            self._cap.release_lease(destination, lease)
        except RedisError as exc:
            log.warning("a connection lease of %s expires instead: %s", destination, exc)


async def rate_slot(
    rates: RateGate, destination: str, key: str, deadline: float
) -> Throttled | None:
    """Take the rate slot of one further message (`key`) to `destination`: None once taken, else
    what holds it back when its slot comes too late for `deadline` (or Redis did not answer)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            answer = await blocking(rates.acquire, destination, key)
        except RedisError as exc:
            # Never an exception: the parts sent already must be recorded as sent.
            log.warning("the rate gate of %s did not answer: %s", destination, exc)
            return Throttled(RETRY, ThrottleReason.RATE)
        if isinstance(answer, Granted):
            return None
        if loop.time() + answer.retry_after >= deadline:
            return answer
        # The slot is reserved for this key: asking again at its time takes it.
        await asyncio.sleep(answer.retry_after)


async def blocking(call: Callable[..., T], *args: Any) -> T:
    """Run a blocking (Redis) call off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, call, *args)


def gate_deferred(
    destination: str, recipients: Sequence[str], retry_after: float, why: str
) -> DeliveryReport:
    """A gate deferral (no attempt): the connection cap is full and none of this worker's
    connections came free in time, or a split delivery's later part got no rate slot in time."""
    reply = Reply(Code.LOCAL_ERROR, "4.4.5", f"throttled by Mailroom: {why}", Step.GATE)
    waiting: tuple[Outcome, ...] = tuple(Deferred(r, reply, retry_after) for r in recipients)
    return DeliveryReport(destination, waiting, StepRecord("gate", reply, 0.0), ())
