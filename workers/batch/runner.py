"""The batch runner: claims a task's items, gates them, starts their sessions on the event loop
and has each recorded as soon as it ends (see the package docstring for the guarantees)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import redis

from workers.batch.items import Handled, Item, Running, Submit, UnrecordedError
from workers.batch.recording import Finished, Recorder
from workers.batch.reports import (
    cancelled,
    content_gone,
    held,
    log_all,
    report_of,
    suppressed,
    throttled,
)
from workers.batch.stores import BatchStores
from workers.delivery.agent import DeliveryAgent
from workers.model.envelope import OutboundMessage
from workers.model.outcome import Suppressed
from workers.model.report import DeliveryReport
from workers.model.throttling import Granted, Throttled
from workers.queue.suppression import active_entries
from workers.traffic.profiles import RELAY
from workers.traffic.relay_hold import held_reply

# The batch's one logger, whichever of its modules writes.
log = logging.getLogger("workers.batch")

_UNCAPPED = Granted(None)


@dataclass(frozen=True)
class BatchTiming:
    """`record_window`: seconds after a batch's claim within which its results must be
    recorded; below the delivery leases' TTL, so nobody else runs them meanwhile.
    `session_limit`: seconds after the claim at which a session still running is cancelled
    (sessions end at their own deadline, so only a bug gets there); below `record_window`.
    `clock` gives the UNIX time the records and deferrals are stamped with."""

    clock: Callable[[], float] = time.time
    record_window: float = 30.0
    session_limit: float = 20.0


DEFAULT_TIMING = BatchTiming()


class BatchRunner:
    """Runs batches; one per worker process."""

    def __init__(
        self,
        *,
        agent: DeliveryAgent,
        stores: BatchStores,
        submit: Submit,
        timing: BatchTiming = DEFAULT_TIMING,
    ) -> None:
        self._agent = agent
        self._stores = stores
        self._submit = submit
        self._timing = timing
        self._recorder = Recorder(stores, timing.clock)

    def run(self, items: Sequence[Item]) -> list[Handled]:
        """Deliver every item that is due; returns what each item handled came to.

        The checks before the sessions cost one Redis round trip each for the whole batch
        (status, leases, the gate, content), not one per item. A Redis error before any session
        starts is raised as it is (nothing was sent).

        :raises UnrecordedError: some results were still unrecorded when the window closed.
        """
        claimed_at = time.monotonic()
        record_by = claimed_at + self._timing.record_window
        settled: list[Finished] = []
        claimed = self._claim(items, settled)
        claimed = self._unless_held(claimed, settled)
        gates = self._gate(claimed)
        admitted: list[Running] = []
        for running, gate in zip(claimed, gates, strict=True):
            if isinstance(gate, Throttled):
                settled.append((running, throttled(running, gate)))
            else:
                admitted.append(running)
        messages = self._stores.content.get_many(list({r.item.message_id: r for r in admitted}))
        futures: dict[Future[DeliveryReport], Running] = {}
        for running in admitted:
            message = messages.get(running.item.message_id)
            if message is None:
                settled.append((running, content_gone(running)))
            else:
                futures[self._start(running, message)] = running
        # From here on sessions run: nothing may leave before every one of them has ended.
        handled: list[Handled] = []
        log_all(settled)
        kept = self._recorder.record(settled, handled)
        waiting = set(futures)
        while waiting:
            # Whatever has finished by now is disposed of together: its leases go back in one
            # round trip, while the rest of the batch is still in its sessions.
            left = claimed_at + self._timing.session_limit - time.monotonic()
            done, waiting = wait(waiting, timeout=max(left, 0.0), return_when=FIRST_COMPLETED)
            if done:
                finished = [(futures[f], report_of(f, futures[f])) for f in done]
            else:
                finished, waiting = [cancelled(f, futures[f]) for f in waiting], set()
            log_all(finished)
            kept = self._recorder.record(kept + finished, handled)
        kept = self._recorder.record_again(kept, handled, record_by)
        try:
            self._stores.disposition.flush()  # the batch's metrics, in one round trip
        except redis.RedisError as exc:  # counts lost, never a delivery
            log.warning("the batch's metrics were not written: %s", exc)
        if kept:
            log.error(
                "%d finished deliveries could not be recorded within %.0f s; handing them back",
                len(kept),
                self._timing.record_window,
            )
            raise UnrecordedError(f"{len(kept)} delivery results unrecorded")
        return handled

    def _start(self, running: Running, message: OutboundMessage) -> Future[DeliveryReport]:
        item = running.item
        coroutine = self._agent.deliver(message, item.destination, running.recipients)
        try:
            return self._submit(coroutine)
        except Exception as exc:  # the runtime is gone: the delivery did not start
            coroutine.close()
            failed: Future[DeliveryReport] = Future()
            failed.set_exception(exc)
            return failed

    def _claim(self, items: Sequence[Item], settled: list[Finished]) -> list[Running]:
        """The items due now, each with its lease; stale and finished ones are skipped, and
        those whose every recipient is suppressed are settled at once (nothing to send).

        The leases are taken before the status is read: a holder records its results before it
        gives its lease back, so a status read under the lease is final. Read first, a worker
        paused between the two round trips could take a lease just released by a holder that
        finished the same attempt, and send it again.
        """
        keys = [(item.message_id, item.destination) for item in items]
        leases = self._stores.leases.take_many(keys)
        claims = self._stores.status.claims(keys)
        now = self._timing.clock()
        claimed: list[Running] = []
        stale: list[tuple[str, str, str]] = []
        for item, lease, claim in zip(items, leases, claims, strict=True):
            state, recipients = claim.state, claim.pending
            if state is None or state.attempt != item.attempt or not recipients:
                if lease is not None:  # stale or finished: nothing to send, nothing to park
                    stale.append((item.message_id, item.destination, lease))
            elif lease is None:
                self._park(item)
            else:
                listed = active_entries(claim.listed.items(), now)
                running = Running(
                    item,
                    state.first_queued,
                    tuple(r for r in recipients if r not in listed),
                    lease,
                    tuple(Suppressed(r, listed[r].reply()) for r in recipients if r in listed),
                )
                if running.recipients:
                    claimed.append(running)
                else:
                    settled.append((running, suppressed(running)))
        self._stores.leases.release_many(stale)
        return claimed

    def _park(self, item: Item) -> None:
        wait = self._stores.leases.remaining(item.message_id, item.destination)
        self._stores.deferred.defer(
            item.message_id, item.destination, item.attempt, self._timing.clock() + wait
        )
        log.info(
            "delivery %s|%s is leased; parked for %.0f s", item.message_id, item.destination, wait
        )

    def _unless_held(self, claimed: list[Running], settled: list[Finished]) -> list[Running]:
        """The relay's deliveries wait while the relay is held and its next probe is not due
        (one round trip for the batch): before the rate gate, so they take no rate slot."""
        holds = self._stores.holds
        if holds is None or not any(r.item.destination == RELAY for r in claimed):
            return claimed
        waiting = holds.waiting()
        if waiting is None:
            return claimed  # not held, or a probe may go: the delivery agent decides
        hold, wait = waiting
        kept = []
        for running in claimed:
            if running.item.destination == RELAY:
                settled.append((running, held(running, held_reply(hold, wait), wait)))
            else:
                kept.append(running)
        return kept

    def _gate(self, claimed: Sequence[Running]) -> list[Granted | Throttled]:
        """The destinations' rate limits, for the whole batch in one round trip; the connection
        cap is the delivery agent's, when it opens a connection."""
        if self._stores.limiter is None:
            return [_UNCAPPED] * len(claimed)
        keys = [(r.item.destination, f"{r.item.message_id}|{r.item.destination}") for r in claimed]
        return self._stores.limiter.acquire_many(keys)
