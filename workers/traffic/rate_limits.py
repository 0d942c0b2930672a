"""Cluster-wide gate before a delivery: per-destination rate (GCRA) and connection cap, in Redis.

Lua scripts decide atomically on Redis `TIME`, the only clock: a destination's rate (GCRA without
burst: one send every T = per_seconds / count), asked before each delivery, and its connection cap
(expiring leases, so a killed worker frees its slots after the lease TTL), asked only to open a
connection, which holds its lease until it closes. A caller told to wait holds a reservation for
its slot, so a delivery deferred to exactly that slot does not race everybody else again.
`penalize` slows a destination down after a receiver's throttling reply (1 s spacing, doubling up
to 60 s) until the penalty key expires. Destinations are case-insensitive; a destination's own
entry wins over `*`, and neither means unlimited.

Keys (times in microseconds of Redis TIME):
    mailroom:rate:tat:{destination}               GCRA theoretical arrival time, PX until it passes
    mailroom:rate:resv:{destination}:{delivery}   reserved slot of one delivery, PX slot + 60 s
    mailroom:rate:slow:{destination}              penalty interval in ms, PX 120 s from last penalty
    mailroom:rate:cause:{destination}             the reply that caused it ("421 4.7.0"), as long
    mailroom:rate:conn:{destination}              zset member lease token, score lease expiry
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from settings import Rate
from workers.model.throttling import Granted, Throttled, ThrottleReason
from workers.queue.redis_text import redis_text

WILDCARD = "*"
_V = TypeVar("_V")
_MICROS = 1_000_000
_CONNECTION_RETRY_MIN = 0.2
_CONNECTION_RETRY_MAX = 1.0

# KEYS: tat, slow, reservation, cause.
# ARGV: interval µs (0 = unlimited), most wait reserved µs, reservation tolerance µs,
#       reservation grace ms.
# Returns {granted 0|1, wait µs, reason, cause}: reason 'slowdown' (with the reply that caused
# it) when a penalty is what spaces the sends, else 'rate'. Numbers are written with %.0f:
# tostring() would print 1.7e+15 and lose the microseconds.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local ahead = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local grace_ms = tonumber(ARGV[4])
local function num(x) return string.format('%.0f', x) end

local reason, cause = 'rate', ''
local slow = redis.call('GET', KEYS[2])
if slow and tonumber(slow) * 1000 > interval then
  interval = tonumber(slow) * 1000
  reason, cause = 'slowdown', redis.call('GET', KEYS[4]) or ''
end

local slot = redis.call('GET', KEYS[3])
if slot and interval > 0 then
  slot = tonumber(slot)
  if slot > now + tolerance then return {0, slot - now, reason, cause} end
  redis.call('DEL', KEYS[3])
  return {1, 0, ''}
elseif slot then
  redis.call('DEL', KEYS[3])
end

if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local start = math.max(tat, now)
  local wait = start - now
  if wait > ahead then return {0, wait, reason, cause} end
  local next_tat = start + interval
  redis.call('SET', KEYS[1], num(next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
  if wait > 0 then
    redis.call('SET', KEYS[3], num(start), 'PX', math.ceil(wait / 1000) + grace_ms)
    return {0, wait, reason, cause}
  end
end
return {1, 0, ''}
"""

# KEYS: conn zset. ARGV: cap, token, lease ttl µs. A lease for one new connection (no rate slot:
# its deliveries passed the rate gate before). Returns as _ACQUIRE does.
_CONNECT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease_us = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now, 'connections'}
end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease_us), ARGV[2])
local keep_ms = math.ceil(lease_us / 1000) + 1000
if redis.call('PTTL', KEYS[1]) < keep_ms then redis.call('PEXPIRE', KEYS[1], keep_ms) end
return {1, 0, ''}
"""

# KEYS: slow, tat, cause. ARGV: first interval ms, most ms, ttl ms, the reply that caused it.
# Returns the new interval in ms. The throttled send happened just now, so the next one waits a
# full interval from now.
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local current = redis.call('GET', KEYS[1])
local ms = tonumber(ARGV[1])
if current then ms = math.min(tonumber(current) * 2, tonumber(ARGV[2])) end
redis.call('SET', KEYS[1], string.format('%.0f', ms), 'PX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
local next_tat = math.max(tat, now + ms * 1000)
redis.call('SET', KEYS[2], string.format('%.0f', next_tat), 'PX',
           math.ceil((next_tat - now) / 1000) + 1000)
return ms
"""


@dataclass(frozen=True)
class LimiterTuning:
    """The gate's timing knobs, in seconds; production keeps the defaults, tests shorten them.

    A throttling reply spaces sends `slowdown_first` apart, doubling up to `slowdown_max`, and
    the penalty lapses `slowdown_ttl` after the last one. A wait longer than
    `max_reservation_ahead` is answered without reserving a slot; a reservation is taken up to
    `reservation_tolerance` early and kept `reservation_grace` past its time.
    """

    slowdown_ttl: float = 120.0
    slowdown_first: float = 1.0
    slowdown_max: float = 60.0
    max_reservation_ahead: float = 3600.0
    reservation_tolerance: float = 0.05
    reservation_grace: float = 60.0


DEFAULT_TUNING = LimiterTuning()


class Limiter:
    """The cluster-wide gate: `acquire` a rate slot before a session, `connection_lease` to open
    a connection (`release_lease` when it closes), `penalize` after a throttling reply."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        rates: Mapping[str, Rate],
        connections: Mapping[str, int],
        lease_ttl: float,
        tuning: LimiterTuning = DEFAULT_TUNING,
    ) -> None:
        """Limits are keyed by destination (case-insensitive) or `*`; times are in seconds.

        `lease_ttl` must outlast a session: a lease older than that frees its connection slot.

        :raises ValueError: a non-positive TTL or cap.
        """
        if lease_ttl <= 0 or tuning.slowdown_ttl <= 0:
            raise ValueError("lease_ttl and slowdown_ttl must be positive")
        if any(cap < 1 for cap in connections.values()):
            raise ValueError("connection caps must be at least 1")
        self._redis = client
        self._rates = {key.lower(): rate for key, rate in rates.items()}
        self._connections = {key.lower(): cap for key, cap in connections.items()}
        self._lease_us = _micros(lease_ttl)
        self._slowdown = (int(tuning.slowdown_first * 1000), int(tuning.slowdown_max * 1000))
        self._slowdown_ttl_ms = max(1, int(tuning.slowdown_ttl * 1000))
        self._ahead_us = _micros(tuning.max_reservation_ahead)
        self._tolerance_us = _micros(tuning.reservation_tolerance)
        self._grace_ms = int(tuning.reservation_grace * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._connect = client.register_script(_CONNECT)
        self._penalize = client.register_script(_PENALIZE)

    def acquire(self, destination: str, delivery_key: str) -> Granted | Throttled:
        """Ask for a rate slot to send to `destination` for the delivery named `delivery_key`.

        Returns `Granted(None)`, or `Throttled` with `retry_after` seconds; a wait reserves the
        slot at now + retry_after for this `delivery_key`, and the next `acquire` with the same
        key at (or up to 50 ms before) that time takes it. Connections are the cap's business
        (`connection_lease`), asked for only when a connection is opened.
        """
        [answer] = self.acquire_many([(destination, delivery_key)])
        return answer

    def acquire_many(self, requests: Sequence[tuple[str, str]]) -> list[Granted | Throttled]:
        """`acquire` for many (destination, delivery_key) pairs, decided in order, in one round
        trip (each decision is still one atomic script run)."""
        if not requests:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for destination, delivery_key in requests:
            name = destination.lower()
            rate = _lookup(self._rates, name)
            keys = [
                f"mailroom:rate:tat:{name}",
                f"mailroom:rate:slow:{name}",
                f"mailroom:rate:resv:{name}:{delivery_key}",
                f"mailroom:rate:cause:{name}",
            ]
            args = [
                0 if rate is None else _micros(rate.interval),
                self._ahead_us,
                self._tolerance_us,
                self._grace_ms,
            ]
            self._acquire(keys=keys, args=args, client=pipe)
        return [_answer(reply, 0, "") for reply in pipe.execute()]

    def connection_lease(self, destination: str) -> Granted | Throttled:
        """A lease for one new connection to `destination` under its cap, with no rate slot.

        `Granted(None)` when the destination has no cap; give a lease back with
        `release_lease` once its connection is closed.
        """
        name = destination.lower()
        cap = _lookup(self._connections, name) or 0
        if not cap:
            return Granted(None)
        token = uuid.uuid4().hex
        reply = self._connect(
            keys=[f"mailroom:rate:conn:{name}"], args=[cap, token, self._lease_us]
        )
        return _answer(reply, cap, token)

    def release_lease(self, destination: str, lease: str) -> None:
        """Give back one connection lease (a parked connection's, when it closes)."""
        self._redis.zrem(f"mailroom:rate:conn:{destination.lower()}", lease)

    def penalize(self, destination: str, cause: str = "") -> float:
        """Slow `destination` down after a throttling reply; returns the new spacing in seconds.

        The first penalty spaces sends 1 s apart, each further one while the penalty lives
        doubles it (at most 60 s); the penalty lapses `slowdown_ttl` after the last one.
        `cause` (the reply's codes, e.g. "421 4.7.0") is what deliveries held back by the
        slow-down give as its reason.
        """
        name = destination.lower()
        first, most = self._slowdown
        keys = [
            f"mailroom:rate:slow:{name}",
            f"mailroom:rate:tat:{name}",
            f"mailroom:rate:cause:{name}",
        ]
        args: list[int | str] = [first, most, self._slowdown_ttl_ms, cause]
        interval_ms = self._penalize(keys=keys, args=args)
        return int(interval_ms) / 1000


def _answer(reply: Sequence[Any], cap: int, token: str) -> Granted | Throttled:
    granted, wait_us, reason, *cause = reply
    if int(granted):
        return Granted(token if cap else None)
    wait = int(wait_us) / _MICROS
    if redis_text(reason) == ThrottleReason.CONNECTIONS:
        retry = min(max(wait, _CONNECTION_RETRY_MIN), _CONNECTION_RETRY_MAX)
        return Throttled(retry, ThrottleReason.CONNECTIONS)
    if redis_text(reason) == ThrottleReason.SLOWDOWN:
        return Throttled(wait, ThrottleReason.SLOWDOWN, redis_text(cause[0]) if cause else "")
    return Throttled(wait, ThrottleReason.RATE)


def _lookup(table: Mapping[str, _V], destination: str) -> _V | None:
    if destination in table:
        return table[destination]
    return table.get(WILDCARD)


def _micros(seconds: float) -> int:
    return round(seconds * _MICROS)
