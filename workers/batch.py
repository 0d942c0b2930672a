"""Run one batch of deliveries: the work of one `mailroom.deliver` task, minus Celery.

Every item is checked before any network traffic: a stale attempt number (its retry is already
scheduled) or nothing pending (a redelivered task whose recipients are done) means skip. A lease
held by another worker means that worker may still be delivering it (kombu hands a task to a
second worker after the visibility timeout even while the first runs it), or may have died: the
item is parked in the deferred set until the lease expires, so it is never dropped; if the holder
finished, the parked copy finds its attempt stale or nothing pending and skips.

Then the cluster-wide rate gate (`workers.traffic.rate_limits`): a delivery over its
destination's rate is deferred to the time the limiter names, without opening a connection or
waiting in a worker slot. A receiver's server-wide throttling reply (`is_throttling`: not
greylisting, which defers its recipient only) slows the whole destination down. The connection
cap is the delivery agent's: it counts connections, not deliveries, and a delivery that finds
it full waits on the event loop for one of this worker's connections to its destination
(`workers.delivery.agent`).

The rest run concurrently on the process's event loop, and each is disposed of as soon as its
own session ends, not when the whole batch does, so a delivered recipient is marked long before
the task is acknowledged.

Once a session has started, its delivery is never lost nor sent twice because recording failed.
Every session of the batch is awaited whatever happens to the others' records. A result Redis
would not take (an outage, a timeout) is kept with its lease and recorded again with backoff
once the batch's sessions are over, until the leases are about to expire (`record_window`):
meanwhile nobody else can deliver it, so a recipient that got its 250 is not sent again. Only a
Redis outage longer than that hands the unrecorded deliveries back (`UnrecordedError`, a
`RedisError`: the worker requeues its task, and they are tried again; the documented at-least-
once case). A result that cannot be applied for any other reason (a bug) is handed back at
once: its delivery is deferred at the same attempt, so the sweeper brings it back; the rest of
its group is recorded one by one. A session still running at `session_limit` (past its own
deadline: a bug) is cancelled and deferred, so nothing holds a worker's thread for ever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any

import redis

from workers.delivery.agent import DeliveryAgent
from workers.model.envelope import OutboundMessage
from workers.model.outcome import Deferred
from workers.model.reply import Code, Reply, Step
from workers.model.report import DeliveryReport, StepRecord
from workers.model.throttling import Granted, Throttled, is_throttling
from workers.observe.attempt_log import log_attempts
from workers.queue.content import ContentStore
from workers.queue.deferred import DeferredSet
from workers.queue.disposition import Disposition, Summary
from workers.queue.leases import Leases
from workers.queue.status import StatusStore
from workers.traffic.rate_limits import Limiter

log = logging.getLogger(__name__)

Submit = Callable[[Coroutine[Any, Any, DeliveryReport]], "Future[DeliveryReport]"]


@dataclass(frozen=True, slots=True)
class Item:
    """One delivery a task carries: ids and a counter, never an address or a body."""

    message_id: str
    destination: str
    attempt: int


_UNCAPPED = Granted(None)
_RECORD_FIRST_PAUSE = 0.1  # seconds before recording a kept result again; doubles each time
_RECORD_MOST_PAUSE = 2.0
_HAND_BACK_DELAY = 60.0  # seconds before a delivery whose result could not be applied runs again


class UnrecordedError(redis.RedisError):
    """Redis did not take some finished deliveries' results within the recording window."""


@dataclass(frozen=True, slots=True)
class _Running:
    item: Item
    first_queued: float
    recipients: tuple[str, ...]
    lease: str


@dataclass(frozen=True, slots=True)
class Handled:
    """One delivery the batch handled, and what it came to."""

    message_id: str
    destination: str
    summary: Summary

    def __str__(self) -> str:
        return f"{self.message_id} {self.destination}: {self.summary}"


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
        record_window: float = 30.0,
        session_limit: float = 20.0,
    ) -> None:
        """`record_window`: seconds after a batch's claim within which its results must be
        recorded; below the delivery leases' TTL, so nobody else runs them meanwhile.
        `session_limit`: seconds after the claim at which a session still running is cancelled
        (sessions end at their own deadline, so only a bug gets there); below `record_window`."""
        self._agent = agent
        self._content = content
        self._status = status
        self._leases = leases
        self._deferred = deferred
        self._disposition = disposition
        self._submit = submit
        self._limiter = limiter
        self._clock = clock
        self._record_window = record_window
        self._session_limit = session_limit

    def run(self, items: Sequence[Item]) -> list[Handled]:
        """Deliver every item that is due; returns what each item handled came to.

        The checks before the sessions cost one Redis round trip each for the whole batch
        (status, leases, the gate, content), not one per item. A Redis error before any session
        starts is raised as it is (nothing was sent).

        :raises UnrecordedError: some results were still unrecorded when the window closed.
        """
        claimed_at = time.monotonic()
        record_by = claimed_at + self._record_window
        claimed = self._claim(items)
        gates = self._gate(claimed)
        admitted: list[_Running] = []
        settled: list[tuple[_Running, DeliveryReport]] = []
        for running, gate in zip(claimed, gates, strict=True):
            if isinstance(gate, Throttled):
                settled.append((running, _throttled(running, gate)))
            else:
                admitted.append(running)
        messages = self._content.get_many(list({r.item.message_id: r for r in admitted}))
        futures: dict[Future[DeliveryReport], _Running] = {}
        for running in admitted:
            message = messages.get(running.item.message_id)
            if message is None:
                settled.append((running, _content_gone(running)))
            else:
                futures[self._start(running, message)] = running
        # From here on sessions run: nothing may leave before every one of them has ended.
        handled: list[Handled] = []
        _log_all(settled)
        kept = self._record(settled, handled)
        waiting = set(futures)
        while waiting:
            # Whatever has finished by now is disposed of together: its leases go back in one
            # round trip, while the rest of the batch is still in its sessions.
            left = claimed_at + self._session_limit - time.monotonic()
            done, waiting = wait(waiting, timeout=max(left, 0.0), return_when=FIRST_COMPLETED)
            if done:
                finished = [(futures[f], _report_of(f, futures[f])) for f in done]
            else:
                finished, waiting = [_cancelled(f, futures[f]) for f in waiting], set()
            _log_all(finished)
            kept = self._record(kept + finished, handled)
        kept = self._record_again(kept, handled, record_by)
        try:
            self._disposition.flush()  # the batch's metrics, in one round trip
        except redis.RedisError as exc:  # counts lost, never a delivery
            log.warning("the batch's metrics were not written: %s", exc)
        if kept:
            log.error(
                "%d finished deliveries could not be recorded within %.0f s; handing them back",
                len(kept),
                self._record_window,
            )
            raise UnrecordedError(f"{len(kept)} delivery results unrecorded")
        return handled

    def _start(self, running: _Running, message: OutboundMessage) -> Future[DeliveryReport]:
        item = running.item
        coroutine = self._agent.deliver(message, item.destination, running.recipients)
        try:
            return self._submit(coroutine)
        except Exception as exc:  # the runtime is gone: the delivery did not start
            coroutine.close()
            failed: Future[DeliveryReport] = Future()
            failed.set_exception(exc)
            return failed

    def _record(
        self, finished: Sequence[tuple[_Running, DeliveryReport]], handled: list[Handled]
    ) -> list[tuple[_Running, DeliveryReport]]:
        """Record a group of finished deliveries, then release their leases: one round trip for
        their status records and one for their leases, not one of each per delivery.

        Returns the deliveries Redis did not take, still leased, to be recorded again.
        """
        if not finished:
            return []
        now = self._clock()
        try:
            summaries: list[Summary] = self._disposition.apply_many(
                [(r.item.message_id, r.item.attempt, r.first_queued, rep) for r, rep in finished],
                now,
            )
        except redis.RedisError as exc:
            log.warning(
                "recording %d finished deliveries failed; keeping their results: %s",
                len(finished),
                exc,
            )
            return list(finished)
        except Exception:
            if len(finished) > 1:  # one bad report must not hold up the rest of its group
                return [kept for one in finished for kept in self._record([one], handled)]
            [(running, _)] = finished
            return self._hand_back(running, handled, now)
        for (running, _), summary in zip(finished, summaries, strict=True):
            handled.append(Handled(running.item.message_id, running.item.destination, summary))
        self._after_recording(finished)
        return []

    def _hand_back(
        self, running: _Running, handled: list[Handled], now: float
    ) -> list[tuple[_Running, DeliveryReport]]:
        """Defer a delivery whose result could not be applied, at the same attempt, so the
        sweeper brings it back; it is not left queued with nothing to move it."""
        item = running.item
        log.exception(
            "delivery %s|%s: its result could not be recorded; trying it again in %.0f s",
            item.message_id,
            item.destination,
            _HAND_BACK_DELAY,
        )
        report = _internal_error(running)
        try:
            self._deferred.defer(
                item.message_id, item.destination, item.attempt, now + _HAND_BACK_DELAY
            )
        except redis.RedisError:
            return [(running, report)]
        summary = Summary(deferred=len(running.recipients), last=str(report.outcomes[0].reply))
        handled.append(Handled(item.message_id, item.destination, summary))
        self._after_recording([(running, report)])
        return []

    def _after_recording(self, recorded: Sequence[tuple[_Running, DeliveryReport]]) -> None:
        """Leases back and throttling penalties: best effort, as the results are safe now (a
        lease left behind expires; a redelivered task finds its attempt stale and skips)."""
        try:
            self._leases.release_many(
                [(r.item.message_id, r.item.destination, r.lease) for r, _ in recorded]
            )
            if self._limiter is not None:
                for running, report in recorded:
                    cause = next((o.reply for o in report.outcomes if _slows_down(o.reply)), None)
                    if cause is not None:
                        codes = f"{cause.code} {cause.enhanced}".strip()
                        self._limiter.penalize(running.item.destination, codes)
        except redis.RedisError as exc:
            log.warning("releasing leases after recording failed: %s", exc)

    def _record_again(
        self,
        kept: list[tuple[_Running, DeliveryReport]],
        handled: list[Handled],
        record_by: float,
    ) -> list[tuple[_Running, DeliveryReport]]:
        """Record kept results again with backoff, until they are recorded or `record_by`."""
        pause = _RECORD_FIRST_PAUSE
        while kept and time.monotonic() + pause < record_by:
            time.sleep(pause)
            kept = self._record(kept, handled)
            pause = min(pause * 2, _RECORD_MOST_PAUSE)
        return kept

    def _claim(self, items: Sequence[Item]) -> list[_Running]:
        """The items due now, each with its lease; stale and finished ones are skipped."""
        states = self._status.claims([(i.message_id, i.destination) for i in items])
        due = [
            (item, state, recipients)
            for item, (state, recipients) in zip(items, states, strict=True)
            if state is not None and state.attempt == item.attempt and recipients
        ]
        leases = self._leases.take_many([(item.message_id, item.destination) for item, *_ in due])
        claimed = []
        for (item, state, recipients), lease in zip(due, leases, strict=True):
            if lease is None:
                self._park(item)
                continue
            claimed.append(_Running(item, state.first_queued, tuple(recipients), lease))
        return claimed

    def _park(self, item: Item) -> None:
        wait = self._leases.remaining(item.message_id, item.destination)
        self._deferred.defer(item.message_id, item.destination, item.attempt, self._clock() + wait)
        log.info(
            "delivery %s|%s is leased; parked for %.0f s", item.message_id, item.destination, wait
        )

    def _gate(self, claimed: Sequence[_Running]) -> list[Granted | Throttled]:
        """The destinations' rate limits, for the whole batch in one round trip; the connection
        cap is the delivery agent's, when it opens a connection."""
        if self._limiter is None:
            return [_UNCAPPED] * len(claimed)
        keys = [(r.item.destination, f"{r.item.message_id}|{r.item.destination}") for r in claimed]
        return self._limiter.acquire_many(keys)


def _log_all(finished: Sequence[tuple[_Running, DeliveryReport]]) -> None:
    for running, report in finished:
        log_attempts(running.item.message_id, running.item.attempt, report)


def _report_of(future: Future[DeliveryReport], running: _Running) -> DeliveryReport:
    try:
        return future.result()
    except Exception:
        # A bug, not a delivery outcome: keep the mail, retry it later, say so.
        item = running.item
        log.exception("delivery %s|%s failed", item.message_id, item.destination)
        return _internal_error(running)


def _cancelled(
    future: Future[DeliveryReport], running: _Running
) -> tuple[_Running, DeliveryReport]:
    """A session still running at the batch's limit: cancelled, so the worker's thread is free
    again and its lease still held when its deferral is recorded."""
    if not future.cancel():  # it ended just now after all
        return running, _report_of(future, running)
    item = running.item
    log.error(
        "delivery %s|%s overran its deadline; cancelled, to be retried",
        item.message_id,
        item.destination,
    )
    text = "delivery overran its deadline and was cancelled; see the worker log"
    return running, _all(running, Reply(Code.LOCAL_ERROR, "4.4.7", text, Step.OPEN_SESSION))


def _slows_down(reply: Reply) -> bool:
    """A receiver's server-wide throttling reply (never the gate's own, nor greylisting)."""
    return reply.step is not Step.GATE and is_throttling(reply.code, reply.enhanced, reply.text)


def _throttled(running: _Running, gate: Throttled) -> DeliveryReport:
    destination = running.item.destination
    wait = f"next slot in {gate.retry_after:.1f} s"
    text = f"throttled by Mailroom: {gate.held_by(destination)}, {wait}"
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
