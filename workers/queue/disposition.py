"""Apply one delivery's report: mark delivered, schedule a retry or expire, dead-letter bounces.

The queue manager half of Postfix (`qmgr_defer.c`, `qmgr_bounce.c`) and KumoMTA's expiry:
Delivered recipients are marked at once; Deferred ones get their next due time from
`retry_schedule` and wait in the deferred set, or turn `expired` once MAX_AGE has passed (keeping
the last reply the server gave); Bounced and expired recipients go to the dead-letter queue.

A throttled delivery (the cluster's rate limit, slow-down or connection cap said "not yet",
before any connection) is no attempt: it keeps its attempt number, is deferred to exactly the
time the limiter named, and leaves no attempt record; it still ages, so MAX_AGE can expire it.
Its recipients show `deferred` with why and until when (`StatusStore.throttle_many`).

Write order is what makes a crash at any point safe. The deferred entry and the dead letter are
written before the status record, whose write also advances the delivery's attempt number: a task
redelivered after the status write finds its attempt stale and skips (the retry is already
scheduled); one redelivered before it runs the attempt again, and its deferral lands on the same
deferred member, so nothing is scheduled twice and nothing is lost. The cluster's metrics
(`workers.observe.metrics`), when given a recorder, are counted last.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from workers.model.outcome import Bounced, Deferred, Delivered, Outcome, Suppressed
from workers.model.reply import Reply, Step
from workers.model.report import Attempt, DeliveryReport, StepRecord, used_tls
from workers.model.states import RecipientState
from workers.observe.metrics import MetricsRecorder
from workers.queue.dead_letters import DeadLetters, dead_recipient
from workers.queue.deferred import DeferredSet
from workers.queue.retry_schedule import RetryPolicy, next_due
from workers.queue.status import Record, StatusStore

_SUPPRESSED = RecipientState.SUPPRESSED


@dataclass(frozen=True, slots=True)
class Summary:
    """What one delivery came to, for the task's result line and the logs."""

    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    expired: int = 0
    suppressed: int = 0
    last: str = ""  # the last non-2xx reply, e.g. "451 4.7.1 greylisted"
    code: str = ""  # its codes, e.g. "451 4.7.1"

    def __str__(self) -> str:
        counts = ", ".join(
            f"{n} {name}"
            for name, n in (
                ("delivered", self.delivered),
                ("deferred", self.deferred),
                ("bounced", self.bounced),
                ("expired", self.expired),
                ("suppressed", self.suppressed),
            )
            if n
        )
        return f"{counts} {self.last}".strip() or "nothing to do"


class Disposition:
    """Applies delivery reports to the status record, the deferred set and the DLQ."""

    def __init__(
        self,
        status: StatusStore,
        deferred: DeferredSet,
        dead_letters: DeadLetters,
        *,
        retry: RetryPolicy,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        self._status = status
        self._deferred = deferred
        self._dead = dead_letters
        self._retry = retry
        self._metrics = metrics

    def apply_many(
        self, deliveries: Sequence[tuple[str, int, float, DeliveryReport]], now: float
    ) -> list[Summary]:
        """Record the reports of deliveries that ended together, each given as (message_id,
        attempt number, first queued, report): each one's deferred entry and dead letters
        first, then every status record in one round trip, then the metrics."""
        summaries = []
        records: list[Record] = []
        counts: list[tuple[DeliveryReport, Counter[RecipientState], bool]] = []
        held: list[tuple[str, list[str], Reply, float]] = []
        for message_id, attempt, first_queued, report in deliveries:
            deferred = [o for o in report.outcomes if isinstance(o, Deferred)]
            throttled = is_throttled(report)
            due = None
            if deferred:
                retry_after = max((o.retry_after or 0.0 for o in deferred), default=0.0) or None
                due = next_due(
                    self._retry,
                    attempt=attempt,
                    first_queued=first_queued,
                    now=now,
                    retry_after=retry_after,
                )
            states = {
                o.recipient: (_state(o, expired=due is None), o.reply) for o in report.outcomes
            }
            next_attempt = attempt if throttled else attempt + 1
            if due is not None:
                self._deferred.defer(message_id, report.destination, next_attempt, due)
            if throttled:
                if due is not None:
                    gate = deferred[0].reply
                    held.append((message_id, [o.recipient for o in deferred], gate, due))
                    listed = {a: (s, r) for a, (s, r) in states.items() if s is _SUPPRESSED}
                    if listed:  # recorded all the same: the gate held back only the others
                        records.append(Record(message_id, listed, [], None, None, attempt))
                    counts.append((report, Counter(s for s, _ in listed.values()), throttled))
                    summaries.append(_summary(states))  # no attempt, no state change
                    continue
                # Expired while throttled: keep the last reply a server gave, if one ever did.
                states = self._last_server_replies(message_id, states)
            for reason in (RecipientState.BOUNCED, RecipientState.EXPIRED):
                dead = [dead_recipient(a, r) for a, (s, r) in states.items() if s is reason]
                if dead:
                    self._dead.add(message_id, report.destination, reason.value, dead, now)
            no_attempt = throttled or all(isinstance(o, Suppressed) for o in report.outcomes)
            last = report.attempts[-1] if report.attempts else None
            records.append(
                Record(
                    message_id,
                    states,
                    [] if no_attempt else attempts_json(report),
                    next_attempt if due is not None and not throttled else None,
                    due,
                    attempt,
                    "" if last is None else last.host,
                    None if last is None else used_tls(last.steps),
                )
            )
            counts.append((report, Counter(state for state, _ in states.values()), throttled))
            summaries.append(_summary(states))
        self._status.record_many(records)
        self._status.throttle_many(held)
        for report, outcomes, throttled in counts:
            self._count(report, outcomes, throttled)
        return summaries

    def flush(self) -> None:
        """Write the metrics counted since the last flush (a worker does after each batch)."""
        if self._metrics is not None:
            self._metrics.flush()

    def _count(
        self, report: DeliveryReport, outcomes: Mapping[RecipientState, int], throttled: bool
    ) -> None:
        # Last, after every store write: a crash before it loses a count, never a delivery.
        if self._metrics is not None:
            self._metrics.delivery(report, outcomes, throttled=throttled)

    def _last_server_replies(
        self, message_id: str, states: dict[str, tuple[RecipientState, Reply]]
    ) -> dict[str, tuple[RecipientState, Reply]]:
        view = self._status.view(message_id)
        known = {r["address"]: r for r in (view or {}).get("recipients", []) if r.get("code")}
        kept = {}
        for address, (state, gate) in states.items():
            if state is _SUPPRESSED:  # its reply is the list's, not a server's
                kept[address] = (state, gate)
                continue
            last = known.get(address)
            server = None
            if last is not None:
                server = Reply(
                    int(last["code"]), str(last["enhanced"]), str(last["reply"]), gate.step
                )
            kept[address] = (state, server or gate)
        return kept


def is_throttled(report: DeliveryReport) -> bool:
    """Whether the gate stopped this delivery before any connection (no attempt was made); its
    suppressed recipients aside, which were never going to be sent to."""
    sent = [o for o in report.outcomes if not isinstance(o, Suppressed)]
    return (
        bool(sent)
        and not report.attempts
        and all(isinstance(o, Deferred) and o.reply.step is Step.GATE for o in sent)
    )


def _state(outcome: Outcome, *, expired: bool) -> RecipientState:
    match outcome:
        case Delivered():
            return RecipientState.DELIVERED
        case Bounced():
            return RecipientState.BOUNCED
        case Deferred():
            return RecipientState.EXPIRED if expired else RecipientState.DEFERRED
        case Suppressed():
            return RecipientState.SUPPRESSED


def _summary(states: dict[str, tuple[RecipientState, Reply]]) -> Summary:
    count = dict.fromkeys(RecipientState, 0)
    last = code = ""
    for state, reply in states.values():
        count[state] += 1
        if reply.reply_class != 2:
            last = str(reply)
            code = f"{reply.code} {reply.enhanced}".strip()
    return Summary(
        delivered=count[RecipientState.DELIVERED],
        deferred=count[RecipientState.DEFERRED],
        bounced=count[RecipientState.BOUNCED],
        expired=count[RecipientState.EXPIRED],
        suppressed=count[RecipientState.SUPPRESSED],
        last=last,
        code=code,
    )


def attempts_json(report: DeliveryReport) -> list[dict[str, Any]]:
    """The report's attempts in the status record's shape; the MX look-up opens the first."""
    attempts = list(report.attempts) or [
        Attempt(datetime.now(UTC), "", "", ())  # the look-up failed: no server was tried
    ]
    shaped = []
    for index, attempt in enumerate(attempts):
        steps = ((report.resolution,) if index == 0 else ()) + attempt.steps
        shaped.append(
            {
                "at": attempt.at.isoformat(),
                "destination": report.destination,
                "host": attempt.host,
                "address": attempt.address,
                "steps": [_step_json(step) for step in steps],
            }
        )
    return shaped


def _step_json(step: StepRecord) -> dict[str, Any]:
    reply = step.reply
    return {
        "step": reply.step.value,
        "command": step.command,
        "code": int(reply.code),
        "enhanced": reply.enhanced,
        "text": reply.text,
        "ms": round(step.ms, 1),
        **({"recipient": step.recipient} if step.recipient else {}),
    }
