"""The reports a batch writes itself, for deliveries no session reported on: throttled by the
gate, held (the relay's login fails), content gone, a session that failed (a bug) or overran its
deadline; and the attempt log line of each finished delivery."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace

from workers.batch.items import Running
from workers.model.outcome import Deferred
from workers.model.reply import Code, Reply, Step
from workers.model.report import DeliveryReport, StepRecord
from workers.model.throttling import Throttled, is_throttling
from workers.observe.attempt_log import log_attempts

# The batch's one logger, whichever of its modules writes.
log = logging.getLogger("workers.batch")


def log_all(finished: Sequence[tuple[Running, DeliveryReport]]) -> None:
    for running, report in finished:
        log_attempts(running.item.message_id, running.item.attempt, report)


def report_of(future: Future[DeliveryReport], running: Running) -> DeliveryReport:
    try:
        return future.result()
    except Exception:
        # A bug, not a delivery outcome: keep the mail, retry it later, say so.
        item = running.item
        log.exception("delivery %s|%s failed", item.message_id, item.destination)
        return internal_error(running)


def cancelled(future: Future[DeliveryReport], running: Running) -> tuple[Running, DeliveryReport]:
    """A session still running at the batch's limit: cancelled, so the worker's thread is free
    again and its lease still held when its deferral is recorded."""
    if not future.cancel():  # it ended just now after all
        return running, report_of(future, running)
    item = running.item
    log.error(
        "delivery %s|%s overran its deadline; cancelled, to be retried",
        item.message_id,
        item.destination,
    )
    text = "delivery overran its deadline and was cancelled; see the worker log"
    return running, _all(running, Reply(Code.LOCAL_ERROR, "4.4.7", text, Step.OPEN_SESSION))


def slows_down(reply: Reply) -> bool:
    """A receiver's server-wide throttling reply (never the gate's own, nor greylisting)."""
    return reply.step is not Step.GATE and is_throttling(reply.code, reply.enhanced, reply.text)


def throttled(running: Running, gate: Throttled) -> DeliveryReport:
    destination = running.item.destination
    wait = f"next slot in {gate.retry_after:.1f} s"
    text = f"throttled by Mailroom: {gate.held_by(destination)}, {wait}"
    reply = Reply(Code.LOCAL_ERROR, "4.4.5", text, Step.GATE)
    outcomes = tuple(Deferred(r, reply, gate.retry_after) for r in running.recipients)
    return DeliveryReport(destination, outcomes, StepRecord("gate", reply, 0.0), ())


def held(running: Running, reply: Reply, wait: float) -> DeliveryReport:
    """The relay is held (`workers.traffic.relay_hold`): no attempt, due again at the probe."""
    outcomes = tuple(Deferred(r, reply, wait) for r in running.recipients)
    return DeliveryReport(running.item.destination, outcomes, StepRecord("gate", reply, 0.0), ())


def suppressed(running: Running) -> DeliveryReport:
    """Every recipient of the delivery is on the suppression list: no attempt, no connection."""
    first = running.suppressed[0].reply
    return DeliveryReport(
        running.item.destination, running.suppressed, StepRecord("suppression", first, 0.0), ()
    )


def with_suppressed(running: Running, report: DeliveryReport) -> DeliveryReport:
    """The report with the delivery's suppressed recipients' outcomes added, once."""
    reported = {outcome.recipient for outcome in report.outcomes}
    missing = tuple(o for o in running.suppressed if o.recipient not in reported)
    return replace(report, outcomes=report.outcomes + missing) if missing else report


def internal_error(running: Running) -> DeliveryReport:
    text = "internal error in Mailroom; see the worker log"
    reply = Reply(Code.LOCAL_ERROR, "4.3.0", text, Step.OPEN_SESSION)
    return _all(running, reply)


def content_gone(running: Running) -> DeliveryReport:
    # The content outlives MAX_AGE by a day; its absence means the message is past its age.
    text = "message content expired before delivery"
    reply = Reply(Code.LOCAL_ERROR, "4.4.7", text, Step.OPEN_SESSION)
    return _all(running, reply)


def _all(running: Running, reply: Reply) -> DeliveryReport:
    outcomes = tuple(Deferred(recipient, reply) for recipient in running.recipients)
    return DeliveryReport(running.item.destination, outcomes, StepRecord("-", reply, 0.0), ())
