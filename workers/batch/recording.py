"""Recording a batch's finished deliveries: their results in Redis, then their leases back and
throttling penalties. A result Redis would not take is kept (with its lease) and recorded again
with backoff; one that cannot be applied at all (a bug) is handed back as a deferral."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import redis

from workers.batch.items import Handled, Running
from workers.batch.reports import internal_error, slows_down, with_suppressed
from workers.batch.stores import BatchStores
from workers.model.report import DeliveryReport
from workers.queue.disposition import Summary

# The batch's one logger, whichever of its modules writes.
log = logging.getLogger("workers.batch")

Finished = tuple[Running, DeliveryReport]

_RECORD_FIRST_PAUSE = 0.1  # seconds before recording a kept result again; doubles each time
_RECORD_MOST_PAUSE = 2.0
_HAND_BACK_DELAY = 60.0  # seconds before a delivery whose result could not be applied runs again


class Recorder:
    """Records finished deliveries in groups, appending what each came to to `handled`."""

    def __init__(self, stores: BatchStores, clock: Callable[[], float]) -> None:
        self._stores = stores
        self._clock = clock

    def record(self, finished: Sequence[Finished], handled: list[Handled]) -> list[Finished]:
        """Record a group of finished deliveries, then release their leases: one round trip for
        their status records and one for their leases, not one of each per delivery.

        Returns the deliveries Redis did not take, still leased, to be recorded again.
        """
        if not finished:
            return []
        # A delivery's suppressed recipients are recorded with the rest of it, under its lease.
        finished = [(running, with_suppressed(running, report)) for running, report in finished]
        now = self._clock()
        try:
            summaries: list[Summary] = self._stores.disposition.apply_many(
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
                return [kept for one in finished for kept in self.record([one], handled)]
            [(running, _)] = finished
            return self._hand_back(running, handled, now)
        for (running, _), summary in zip(finished, summaries, strict=True):
            handled.append(Handled(running.item.message_id, running.item.destination, summary))
        self._suppress_hard_bounces(finished, now)
        self._after_recording(finished)
        return []

    def _suppress_hard_bounces(self, recorded: Sequence[Finished], now: float) -> None:
        """After the status records: the list is advice, the records are the truth."""
        suppression = self._stores.suppression
        if suppression is not None:
            entries = [
                entry
                for running, report in recorded
                for entry in suppression.entries_for(running.item.message_id, report, now)
            ]
            suppression.add(entries)

    def _hand_back(self, running: Running, handled: list[Handled], now: float) -> list[Finished]:
        """Defer a delivery whose result could not be applied, at the same attempt, so the
        sweeper brings it back; it is not left queued with nothing to move it."""
        item = running.item
        log.exception(
            "delivery %s|%s: its result could not be recorded; trying it again in %.0f s",
            item.message_id,
            item.destination,
            _HAND_BACK_DELAY,
        )
        report = internal_error(running)
        try:
            self._stores.deferred.defer(
                item.message_id, item.destination, item.attempt, now + _HAND_BACK_DELAY
            )
        except redis.RedisError:
            return [(running, report)]
        summary = Summary(deferred=len(running.recipients), last=str(report.outcomes[0].reply))
        handled.append(Handled(item.message_id, item.destination, summary))
        self._after_recording([(running, report)])
        return []

    def _after_recording(self, recorded: Sequence[Finished]) -> None:
        """Leases back and throttling penalties: best effort, as the results are safe now (a
        lease left behind expires; a redelivered task finds its attempt stale and skips)."""
        try:
            self._stores.leases.release_many(
                [(r.item.message_id, r.item.destination, r.lease) for r, _ in recorded]
            )
            limiter = self._stores.limiter
            if limiter is not None:
                for running, report in recorded:
                    cause = next((o.reply for o in report.outcomes if slows_down(o.reply)), None)
                    if cause is not None:
                        codes = f"{cause.code} {cause.enhanced}".strip()
                        limiter.penalize(running.item.destination, codes)
        except redis.RedisError as exc:
            log.warning("releasing leases after recording failed: %s", exc)

    def record_again(
        self,
        kept: list[Finished],
        handled: list[Handled],
        record_by: float,
    ) -> list[Finished]:
        """Record kept results again with backoff, until they are recorded or `record_by`."""
        pause = _RECORD_FIRST_PAUSE
        while kept and time.monotonic() + pause < record_by:
            time.sleep(pause)
            kept = self.record(kept, handled)
            pause = min(pause * 2, _RECORD_MOST_PAUSE)
        return kept
