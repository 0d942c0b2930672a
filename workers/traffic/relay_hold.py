"""The relay's hold: when its authentication fails for a reason only an operator can fix (a
refused token request, a refused AUTH, Basic AUTH turned off), relay deliveries wait instead of
failing one by one, and the first one to get through again lifts it.

Every worker sees one record, `mailroom:relay:hold` (a hash: reason, hint, since). While it is
there, relay deliveries are parked until the next probe time; once per probe interval one worker
takes `mailroom:relay:hold:probe` (`SET NX PX`) and lets one delivery try. The exporter shows
the record as the gauge mailroom_relay_held.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from workers.model.reply import Code, Reply, Step
from workers.observe.metrics import RELAY_HOLD_KEY
from workers.queue.redis_text import redis_text

HOLD_KEY = RELAY_HOLD_KEY
PROBE_KEY = HOLD_KEY + ":probe"
DEFAULT_PROBE_INTERVAL = 60.0  # seconds between two tries of a held relay (RELAY_PROBE_INTERVAL)


@dataclass(frozen=True, slots=True)
class Hold:
    """Why the relay is held, what fixes it, and since when (UNIX time)."""

    reason: str
    hint: str
    since: float


class RelayHolds:
    """The hold record and the probe turn in Redis; blocking calls."""

    def __init__(self, client: redis.Redis, probe_interval: float = DEFAULT_PROBE_INTERVAL) -> None:
        self._client = client
        self.probe_interval = probe_interval

    def current(self) -> Hold | None:
        """The hold in force, if any."""
        raw = {redis_text(k): redis_text(v) for k, v in self._client.hgetall(HOLD_KEY).items()}
        if not raw:
            return None
        return Hold(raw.get("reason", ""), raw.get("hint", ""), float(raw.get("since", 0) or 0))

    def hold(self, reason: str, hint: str) -> bool:
        """Hold the relay (or say why again); True when it was not held before. The next probe
        comes one interval from now."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hsetnx(HOLD_KEY, "since", repr(time.time()))
        pipe.hset(HOLD_KEY, mapping={"reason": reason, "hint": hint})
        pipe.set(PROBE_KEY, "1", px=self._interval_ms())
        new, *_ = pipe.execute()
        return bool(new)

    def lift(self) -> bool:
        """Lift the hold; True when there was one."""
        return bool(self._client.delete(HOLD_KEY))

    def take_probe(self) -> bool:
        """This worker's turn to try the held relay, at most once per probe interval."""
        return bool(self._client.set(PROBE_KEY, "1", nx=True, px=self._interval_ms()))

    def waiting(self) -> tuple[Hold, float] | None:
        """The hold in force and the seconds until its next probe, in one round trip; None when
        there is no hold, or when its probe is due (a delivery may try)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(HOLD_KEY)
        pipe.pttl(PROBE_KEY)
        raw, left = pipe.execute()
        if not raw or not isinstance(left, int) or left <= 0:
            return None
        fields = {redis_text(k): redis_text(v) for k, v in raw.items()}
        hold = Hold(fields.get("reason", ""), fields.get("hint", ""), 0.0)
        return hold, left / 1000

    def probe_in(self) -> float:
        """Seconds until the next probe may be taken."""
        left = self._client.pttl(PROBE_KEY)
        return max(int(left), 0) / 1000 if isinstance(left, int) and left > 0 else 0.0

    def _interval_ms(self) -> int:
        return max(int(self.probe_interval * 1000), 1)


def held_reply(hold: Hold, wait: float) -> Reply:
    """What a relay delivery held back gets: the gate's 451 4.7.0 with the reason and the fix."""
    text = f"relay held: {hold.reason}; to fix: {hold.hint}; next try in {wait:g} s"
    return Reply(Code.LOCAL_ERROR, "4.7.0", text, Step.GATE)
