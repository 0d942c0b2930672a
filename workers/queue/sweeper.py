"""Move due deferred deliveries back to their shard queues, from inside every worker process.

Every worker runs one sweeper thread; the deferred set's atomic claim (`DeferredSet.claim_due`)
makes sure two sweepers never release the same entry, and `recover` puts back entries whose
sweeper died between claiming and enqueuing, so nothing is lost and nothing waits for ever. The
sweeper gets an `enqueue` callable and never imports Celery (rq's `scheduler.py` does the same
with its `ScheduledJobRegistry`). Given a `prune` callable, it also enforces the dead letters'
retention, once a minute.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis import RedisError

from workers.queue.deferred import DeferredSet

log = logging.getLogger(__name__)

Enqueue = Callable[[Sequence[tuple[str, str, int]]], None]


@dataclass(frozen=True)
class SweepPacing:
    """How the sweeper paces itself: a round every `interval` seconds, claiming at most `batch`
    entries at a time, pruning dead letters every `prune_every` seconds of `clock`."""

    interval: float = 1.0
    batch: int = 500
    prune_every: float = 60.0
    clock: Callable[[], float] = time.time


DEFAULT_PACING = SweepPacing()


class Sweeper:
    """A daemon thread that claims due entries every `interval` seconds and enqueues them."""

    def __init__(
        self,
        deferred: DeferredSet,
        enqueue: Enqueue,
        *,
        prune: Callable[[float], int] | None = None,
        pacing: SweepPacing = DEFAULT_PACING,
    ) -> None:
        self._prune = prune
        self._prune_every = pacing.prune_every
        self._pruned_at = -math.inf
        self._deferred = deferred
        self._enqueue = enqueue
        self._interval = pacing.interval
        self._batch = pacing.batch
        self._clock = pacing.clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> int:
        """Claim, enqueue and release every entry due now; returns how many moved.

        Every `prune_every` seconds, first calls `prune` (dead letters past their retention).
        """
        now = self._clock()
        if self._prune is not None and now - self._pruned_at >= self._prune_every:
            self._pruned_at = now
            pruned = self._prune(now)
            if pruned:
                log.info("pruned %d dead letters past their retention", pruned)
        self._deferred.recover(now)
        moved = 0
        while True:
            claimed = self._deferred.claim_due(now, limit=self._batch)
            if not claimed:
                return moved
            self._enqueue(claimed)
            self._deferred.release(claimed)
            moved += len(claimed)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="mailroom-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self.sweep_once()
                if moved:
                    log.info("moved %d due deferred deliveries back to their queues", moved)
            except (RedisError, OSError) as exc:
                # Redis restarting or a broker hiccup: one line a round, not a traceback; try
                # again next round, never die.
                log.warning("sweeping the deferred set failed: %s", exc)
            except Exception:
                log.exception("sweeping the deferred set failed")  # a bug: keep its traceback
            self._stop.wait(self._interval)
