"""One structured log line per delivery attempt, for operators and log pipelines.

Each line is a JSON object on the `mailroom.attempts` logger: message id, destination, attempt
number, the server (host and address), the step the attempt ended at with its command, reply
code, enhanced code and text, the attempt's duration, and whether it went over TLS. Recipient
addresses, message content and credentials never appear: the reply text is the server's with
any address it quotes cut to `*@domain` (workers/redaction.py), and Mailroom's own replies name
hosts, never accounts' secrets. A delivery that never reached a
server (DNS failure, throttled at the gate) logs one line for that step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from workers.model.redaction import redact_addresses
from workers.model.report import DeliveryReport, StepRecord, used_tls

log = logging.getLogger("mailroom.attempts")


def log_attempts(message_id: str, attempt: int, report: DeliveryReport) -> None:
    """Log one line per attempt in `report` (or one for the step that stopped it early)."""
    if not log.isEnabledFor(logging.INFO):
        return
    delivery = _Delivery(message_id, attempt, report.destination)
    if not report.attempts:
        log.info(_line(delivery, "", "", [report.resolution]))
        return
    for tried in report.attempts:
        log.info(_line(delivery, tried.host, tried.address, list(tried.steps)))


@dataclass(frozen=True, slots=True)
class _Delivery:
    message_id: str
    attempt: int
    destination: str


def _line(delivery: _Delivery, host: str, address: str, steps: list[StepRecord]) -> str:
    last = steps[-1] if steps else None
    # QUIT never decides an outcome: report the step before it when there is one.
    if last is not None and last.command == "QUIT" and len(steps) > 1:
        last = steps[-2]
    fields: dict[str, Any] = {
        "event": "attempt",
        "message_id": delivery.message_id,
        "destination": delivery.destination,
        "attempt": delivery.attempt,
        "host": host,
        "address": address,
        "step": last.reply.step.value if last else "",
        "command": last.command if last else "",
        "code": int(last.reply.code) if last else 0,
        "enhanced": last.reply.enhanced if last else "",
        "text": redact_addresses(last.reply.text) if last else "",
        "ms": round(sum(step.ms for step in steps), 1),
        "tls": used_tls(steps),
    }
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
