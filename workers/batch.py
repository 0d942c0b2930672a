"""Run one batch of deliveries: the work of one `mailroom.deliver` task, minus Celery.

Every item is checked before any network traffic: a stale attempt number (its retry is already
scheduled) or nothing pending (a redelivered task whose recipients are done) means skip. A lease
held by another worker means that worker may still be delivering it (kombu hands a task to a
second worker after the visibility timeout even while the first runs it), or may have died: the
item is parked in the deferred set until the lease expires, so it is never dropped; if the holder
finished, the parked copy finds its attempt stale or nothing pending and skips.

Then the cluster-wide gate (`workers.rate_limits`): a delivery over its destination's rate or
connection cap is deferred to the time the limiter names, without opening a connection or
waiting in a worker slot. A receiver's throttling reply slows the whole destination down. With
connection reuse, a connection keeps its cap lease while parked; a delivery that finds the cap
full while this process has connections open to its destination asks for a rate slot only and
runs on the first of them to come free (`reuse_only`).

The rest run concurrently on the process's event loop, and each is disposed of as soon as its
own session ends, not when the whole batch does, so a delivered recipient is marked long before
the task is acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, replace
from typing import Any

from workers.attempt_log import log_attempts
from workers.content import ContentStore
from workers.deferred import DeferredSet
from workers.delivery import DeliveryAgent, DeliveryReport
from workers.disposition import Disposition, Summary
from workers.leases import Leases
from workers.outcome import Deferred
from workers.rate_limits import Granted, Limiter, Throttled, ThrottleReason, is_throttling
from workers.reply import Code, Reply, Step
from workers.smtp_session import StepRecord
from workers.status import StatusStore

log = logging.getLogger(__name__)

Submit = Callable[[Coroutine[Any, Any, DeliveryReport]], "Future[DeliveryReport]"]


@dataclass(frozen=True, slots=True)
class Item:
    """One delivery a task carries: ids and a counter, never an address or a body."""

    message_id: str
    destination: str
    attempt: int


_UNCAPPED = Granted(None)


@dataclass(frozen=True, slots=True)
class _Running:
    item: Item
    first_queued: float
    recipients: tuple[str, ...]
    lease: str
    granted: Granted = _UNCAPPED
    reuse_only: bool = False


class BatchRunner:
    """Runs batches; one per worker process."""

    def __init__(
        self,
        *,
        agent: DeliveryAgent,
        content: ContentStore,
        status: StatusStore,
        leases: Leases,
        deferred: DeferredSet,
        disposition: Disposition,
        submit: Submit,
        limiter: Limiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._agent = agent
        self._content = content
        self._status = status
        self._leases = leases
        self._deferred = deferred
        self._disposition = disposition
        self._submit = submit
        self._limiter = limiter
        self._clock = clock

    def run(self, items: Sequence[Item]) -> list[str]:
        """Deliver every item that is due; returns one summary line per item handled."""
        futures: dict[Future[DeliveryReport], _Running] = {}
        lines = []
        for item in items:
            running = self._claim(item)
            if running is None:
                continue
            gate = self._gate(running)
            if isinstance(gate, Throttled):
                lines.append(self._finish(running, _throttled(running, gate)))
                continue
            running = replace(running, granted=gate[0], reuse_only=gate[1])
            message = self._content.get(item.message_id)
            if message is None:
                lines.append(self._finish(running, _content_gone(running)))
                continue
            coroutine = self._agent.deliver(
                message,
                item.destination,
                running.recipients,
                lease=running.granted.lease,
                reuse_only=running.reuse_only,
            )
            futures[self._submit(coroutine)] = running
        for future in as_completed(futures):
            running = futures[future]
            try:
                report = future.result()
            except Exception:
                # A bug, not a delivery outcome: keep the mail, retry it later, say so.
                item = running.item
                log.exception("delivery %s|%s failed", item.message_id, item.destination)
                report = _internal_error(running)
            lines.append(self._finish(running, report))
        self._disposition.flush()  # the batch's metrics, in one round trip
        return lines

    def _claim(self, item: Item) -> _Running | None:
        state = self._status.delivery(item.message_id, item.destination)
        if state is None or state.attempt != item.attempt:
            return None
        recipients = self._status.pending(item.message_id, item.destination)
        if not recipients:
            return None
        lease = self._leases.take(item.message_id, item.destination)
        if lease is None:
            wait = self._leases.remaining(item.message_id, item.destination)
            self._deferred.defer(
                item.message_id, item.destination, item.attempt, self._clock() + wait
            )
            log.info(
                "delivery %s|%s is leased; parked for %.0f s",
                item.message_id,
                item.destination,
                wait,
            )
            return None
        return _Running(item, state.first_queued, tuple(recipients), lease)

    def _gate(self, running: _Running) -> tuple[Granted, bool] | Throttled:
        """The limiter's answer, and whether the delivery may only use a parked connection."""
        if self._limiter is None:
            return _UNCAPPED, False
        item = running.item
        key = f"{item.message_id}|{item.destination}"
        gate = self._limiter.acquire(item.destination, key)
        if isinstance(gate, Granted):
            return gate, False
        pool = self._agent.pool
        if gate.reason is ThrottleReason.CONNECTIONS and pool and pool.open(item.destination):
            # This worker's open connections hold cap leases: wait for one of them to be free
            # (on the event loop, not in this slot) and use it, at the rate.
            gate = self._limiter.acquire(item.destination, key, connection=False)
            return gate if isinstance(gate, Throttled) else (gate, True)
        return gate

    def _finish(self, running: _Running, report: DeliveryReport) -> str:
        item = running.item
        now = self._clock()
        log_attempts(item.message_id, item.attempt, report)
        if self._limiter is not None:
            if not report.lease_kept:
                self._limiter.release(item.destination, running.granted)
            if any(_slows_down(outcome.reply) for outcome in report.outcomes):
                self._limiter.penalize(item.destination)
        try:
            summary: Summary = self._disposition.apply(
                item.message_id, item.attempt, running.first_queued, report, now
            )
        finally:
            self._leases.release(item.message_id, item.destination, running.lease)
        return f"{item.message_id} {item.destination}: {summary}"


def _slows_down(reply: Reply) -> bool:
    """A receiver's own throttling reply (never Mailroom's synthetic ones)."""
    return reply.step is not Step.GATE and is_throttling(reply.code, reply.enhanced)


def _throttled(running: _Running, gate: Throttled) -> DeliveryReport:
    destination = running.item.destination
    wait = f"next slot in {gate.retry_after:.1f} s"
    text = f"throttled by Mailroom: {gate.reason} limit of {destination}, {wait}"
    reply = Reply(Code.LOCAL_ERROR, "4.4.5", text, Step.GATE)
    outcomes = tuple(Deferred(r, reply, gate.retry_after) for r in running.recipients)
    return DeliveryReport(destination, outcomes, StepRecord("gate", reply, 0.0), ())


def _internal_error(running: _Running) -> DeliveryReport:
    text = "internal error in Mailroom; see the worker log"
    reply = Reply(Code.LOCAL_ERROR, "4.3.0", text, Step.OPEN_SESSION)
    return _all(running, reply)


def _content_gone(running: _Running) -> DeliveryReport:
    # The content outlives MAX_AGE by a day; its absence means the message is past its age.
    text = "message content expired before delivery"
    reply = Reply(Code.LOCAL_ERROR, "4.4.7", text, Step.OPEN_SESSION)
    return _all(running, reply)


def _all(running: _Running, reply: Reply) -> DeliveryReport:
    outcomes = tuple(Deferred(recipient, reply) for recipient in running.recipients)
    return DeliveryReport(running.item.destination, outcomes, StepRecord("-", reply, 0.0), ())
