"""Cluster-wide delivery metrics: counters in Redis, written per delivery, read by the exporter.

Workers are many processes on many machines, so a per-process Prometheus registry would show
each scrape one process's share; the counters live in Redis instead, and `mailroom exporter`
reads them on every scrape. `MetricsRecorder.delivery` adds a delivery's counts in memory and
`flush` writes everything added since in one MULTI/EXEC (a worker flushes after each batch), so
a scrape never sees half a delivery and a batch of a hundred deliveries costs one round trip, not
a hundred. Metrics are best effort: a Redis error while flushing is logged and never fails the
deliveries it describes, and a crash loses at most the counts of the batch in flight.

Keys (hashes whose values are counts; counters only grow):
  mailroom:metrics:deliveries    field "outcome|destination": recipients per outcome (delivered,
                                 deferred, bounced, expired) -> mailroom_deliveries_total
  mailroom:metrics:replies       field "class|step": SMTP replies per class (2xx, 4xx, 5xx) and
                                 step -> mailroom_smtp_replies_total
  mailroom:metrics:session       fields "0.05" … "300", "+Inf": sessions whose duration falls in
                                 that bucket and no lower one (not cumulative), "sum" (seconds)
                                 and "count" -> mailroom_session_seconds
  mailroom:metrics:throttled     field destination: deliveries the cluster's gate throttled
                                 -> mailroom_throttled_total
  mailroom:metrics:destinations  set of the destinations admitted as label values
  mailroom:metrics:enqueued      string: messages producers put on the queues (`count_enqueued`)
                                 -> mailroom_messages_enqueued_total
  mailroom:metrics:oauth_tokens  field "provider|outcome": requests to an OAuth token endpoint
                                 (outcome: issued, refused, unavailable), counted by the token
                                 cache as they are made -> mailroom_oauth_token_requests_total
  mailroom:metrics:mta_sts       field mode: direct MX deliveries that fell short of the recipient
                                 domain's MTA-STS policy (mode enforce or testing)
                                 -> mailroom_mta_sts_failures_total
The relay's hold record (`workers.traffic.relay_hold.HOLD_KEY`) is read with them ->
mailroom_relay_held (1 while relay deliveries wait for an operator's fix, else 0).

Destinations are label values, and each one is a time series in Prometheus; the first
`max_destinations` (1000) distinct destinations keep their own name, and every later one is
counted under the destination "other". A throttled delivery counts in the throttled total only
(it was no attempt), unless it expired, which counts as expired.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from workers.model.reply import Step
from workers.model.states import RecipientState
from workers.queue.redis_text import redis_text

if TYPE_CHECKING:
    from workers.model.report import DeliveryReport, StepRecord

log = logging.getLogger(__name__)

PREFIX = "mailroom:metrics:"
DELIVERIES_KEY = PREFIX + "deliveries"
REPLIES_KEY = PREFIX + "replies"
SESSION_KEY = PREFIX + "session"
THROTTLED_KEY = PREFIX + "throttled"
DESTINATIONS_KEY = PREFIX + "destinations"
ENQUEUED_KEY = PREFIX + "enqueued"
OAUTH_TOKENS_KEY = PREFIX + "oauth_tokens"
MTA_STS_KEY = PREFIX + "mta_sts"
RELAY_HOLD_KEY = "mailroom:relay:hold"  # workers.traffic.relay_hold's record

OTHER = "other"  # the destination label of every destination past the cap
MAX_DESTINATIONS = 1000
OUTCOMES = (
    RecipientState.DELIVERED,
    RecipientState.DEFERRED,
    RecipientState.BOUNCED,
    RecipientState.EXPIRED,
    RecipientState.SUPPRESSED,
)
# Upper bounds of mailroom_session_seconds' buckets, +Inf aside: a greylisting MX answers in
# milliseconds, a tarpitting one can hold a session for minutes (RFC 5321 §4.5.3.2 timeouts).
SESSION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
INF = "+Inf"
_SEPARATOR = "|"  # neither an outcome, a reply class nor a step contains it

# Admit a destination as a label value while fewer than ARGV[2] are admitted: 1 if it may be
# named, 0 if it counts as "other". One script, so concurrent workers never pass the cap.
_ADMIT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


def bucket_name(bound: float) -> str:
    """The hash field (and the `le` label value) of the bucket with upper bound `bound`."""
    return f"{bound:g}"


@dataclass(frozen=True, slots=True)
class SessionHistogram:
    """mailroom_session_seconds as stored: a count per bucket (not cumulative), sum and count."""

    buckets: tuple[tuple[str, int], ...]  # ("0.05", n), …, ("+Inf", n), in order
    sum: float
    count: int

    def cumulative(self) -> list[tuple[str, int]]:
        """The buckets as Prometheus exposes them: each counts every lower bucket too."""
        total = 0
        shown = []
        for name, n in self.buckets:
            total += n
            shown.append((name, total))
        return shown


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Every counter at one moment, keyed by label values."""

    deliveries: dict[tuple[str, str], int]  # (outcome, destination) -> recipients
    replies: dict[tuple[str, str], int]  # (class, step) -> replies
    session: SessionHistogram
    throttled: dict[str, int]  # destination -> throttled deliveries
    enqueued: int = 0  # messages producers enqueued
    # (provider, outcome) -> requests to the relay's token endpoint
    oauth_tokens: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    relay_held: bool = False
    # policy mode -> deliveries short of the recipient domain's MTA-STS policy
    mta_sts_failures: dict[str, int] = dataclasses.field(default_factory=dict)


class MetricsRecorder:
    """Records deliveries into the cluster's counters; one per worker process, thread-safe."""

    def __init__(self, client: redis.Redis, *, max_destinations: int = MAX_DESTINATIONS) -> None:
        self._client = client
        self._max_destinations = max_destinations
        self._admit = client.register_script(_ADMIT)
        # Once admitted, a destination stays admitted: remembering it saves a round trip.
        self._admitted: set[str] = set()
        self._lock = threading.Lock()  # a worker's task threads record concurrently
        self._pending: dict[str, Counter[str]] = {}
        self._seconds = 0.0  # session seconds not yet flushed (HINCRBYFLOAT, apart)

    def delivery(
        self,
        report: DeliveryReport,
        outcomes: Mapping[RecipientState, int],
        *,
        throttled: bool = False,
    ) -> None:
        """Count one delivery: recipients per outcome, every reply, each session's duration.

        `outcomes` counts recipients by their final state for this delivery (other states than
        the four outcomes are ignored); `throttled` says the cluster's gate stopped it.
        """
        try:
            destination = self._label(report.destination)
        except redis.RedisError as exc:
            log.warning("metrics of %s not recorded: %s", report.destination, exc)
            return
        counts: dict[str, Counter[str]] = {
            DELIVERIES_KEY: Counter(
                {
                    f"{state.value}{_SEPARATOR}{destination}": n
                    for state in OUTCOMES
                    if (n := outcomes.get(state, 0))
                }
            ),
            REPLIES_KEY: _reply_counts(report),
            SESSION_KEY: Counter(),
            THROTTLED_KEY: Counter({destination: 1} if throttled else {}),
            MTA_STS_KEY: Counter([report.mta_sts_failure] if report.mta_sts_failure else []),
        }
        seconds = 0.0
        for attempt in report.attempts:
            duration = sum(step.ms for step in attempt.steps) / 1000
            counts[SESSION_KEY][_bucket(duration)] += 1
            counts[SESSION_KEY]["count"] += 1
            seconds += duration
        with self._lock:
            for key, added in counts.items():
                self._pending.setdefault(key, Counter()).update(added)
            self._seconds += seconds

    def flush(self) -> None:
        """Write every count added since the last flush, in one MULTI/EXEC."""
        with self._lock:
            pending, self._pending = self._pending, {}
            seconds, self._seconds = self._seconds, 0.0
        pipe = self._client.pipeline(transaction=True)
        for key, counts in pending.items():
            for field, n in counts.items():
                if n:
                    pipe.hincrby(key, field, n)
        if seconds:
            pipe.hincrbyfloat(SESSION_KEY, "sum", seconds)
        if not pipe.command_stack:
            return
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics not recorded: %s", exc)

    def _label(self, destination: str) -> str:
        if destination in self._admitted:
            return destination
        if not self._admit(keys=[DESTINATIONS_KEY], args=[destination, self._max_destinations]):
            return OTHER
        if len(self._admitted) < self._max_destinations:
            self._admitted.add(destination)
        return destination


def read_metrics(client: redis.Redis) -> MetricsSnapshot:
    """Every counter, read in one MULTI/EXEC so the snapshot holds whole deliveries only."""
    pipe = client.pipeline(transaction=True)
    hashes = (
        DELIVERIES_KEY,
        REPLIES_KEY,
        SESSION_KEY,
        THROTTLED_KEY,
        OAUTH_TOKENS_KEY,
        MTA_STS_KEY,
    )
    for key in hashes:
        pipe.hgetall(key)
    pipe.get(ENQUEUED_KEY)
    pipe.exists(RELAY_HOLD_KEY)
    *read, enqueued, held = pipe.execute()
    deliveries, replies, session, throttled, tokens, mta_sts = (_decoded(h) for h in read)
    names = [*(bucket_name(b) for b in SESSION_BUCKETS), INF]
    return MetricsSnapshot(
        deliveries=_pairs(deliveries),
        replies=_pairs(replies),
        session=SessionHistogram(
            buckets=tuple((name, int(session.get(name, 0))) for name in names),
            sum=float(session.get("sum", 0.0)),
            count=int(session.get("count", 0)),
        ),
        throttled={name: int(n) for name, n in throttled.items()},
        enqueued=int(enqueued or 0),
        oauth_tokens=_pairs(tokens),
        relay_held=bool(held),
        mta_sts_failures={mode: int(n) for mode, n in mta_sts.items()},
    )


def count_enqueued(client: redis.Redis, messages: int) -> None:
    """Add `messages` that a producer has just put on the queues (best effort: a Redis error is
    logged, never raised, as the messages are safely queued already)."""
    if messages <= 0:
        return
    try:
        client.incrby(ENQUEUED_KEY, messages)
    except redis.RedisError as exc:
        log.warning("counting %d enqueued messages failed: %s", messages, exc)


def _reply_counts(report: DeliveryReport) -> Counter[str]:
    """Replies by "class|step": the MX look-up's, then every attempt's steps.

    Intermediate replies (334 to AUTH, 354 to DATA) are left out: the final reply of their step
    is counted. Synthetic records that are not a look-up (the gate, an internal error) stand in
    for `resolution` when no look-up ran, and are no reply of any server.
    """
    steps: list[StepRecord] = []
    if report.resolution.reply.step is Step.RESOLVE_MX:
        steps.append(report.resolution)
    steps += [step for attempt in report.attempts for step in attempt.steps]
    return Counter(
        f"{step.reply.reply_class}xx{_SEPARATOR}{step.reply.step.value}"
        for step in steps
        if step.reply.reply_class in (2, 4, 5)
    )


def _bucket(seconds: float) -> str:
    # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= seconds.
    index = bisect.bisect_left(SESSION_BUCKETS, seconds)
    return bucket_name(SESSION_BUCKETS[index]) if index < len(SESSION_BUCKETS) else INF


def _decoded(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {redis_text(k): redis_text(v) for k, v in raw.items()}


def _pairs(counts: Mapping[str, str]) -> dict[tuple[str, str], int]:
    pairs = {}
    for field, n in counts.items():
        first, _, second = field.partition(_SEPARATOR)
        pairs[(first, second)] = int(n)
    return pairs
