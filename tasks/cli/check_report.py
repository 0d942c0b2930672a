"""The report of `mailroom check`: one line per check and SMTP step then the verdict, or the same
as one JSON object (`--json`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_never

from settings import DeliveryMode, Settings
from workers.model.outcome import Bounced, Deferred, Delivered, Outcome
from workers.model.report import StepRecord

if TYPE_CHECKING:
    from tasks.cli.check import Plan, RedisCheck
    from workers.model.report import DeliveryReport


def as_lines(
    settings: Settings, plan: Plan, redis_check: RedisCheck, report: DeliveryReport
) -> list[str]:
    """The human-readable report: one line per check and per SMTP step, then the verdict."""
    mode = settings.delivery.value
    if settings.delivery is DeliveryMode.RELAY:
        mode += f" {settings.relay_host}:{settings.relay_port} ({settings.relay_security.value})"
    lines = [f"{'settings':<12} ok    delivery={mode} helo={settings.helo_name}"]
    if redis_check.error is None:
        lines.append(f"{'redis':<12} ok    {redis_check.url}")
    else:
        lines.append(f"{'redis':<12} FAIL  {redis_check.url}: {redis_check.error}")
    what = "probe, stops after RCPT TO" if plan.probe else "sends a test message"
    lines.append(
        f"{'delivery':<12} to    {plan.destination}: {plan.message.sender} -> "
        f"{plan.recipient} ({what})"
    )
    lines.append(_step_line(report.resolution, plan.destination))
    for attempt in report.attempts:
        lines.extend(
            _step_line(record, f"{attempt.host}[{attempt.address}]") for record in attempt.steps
        )
    [outcome] = report.outcomes
    reply = outcome.reply
    lines.append(f"result  {_result(outcome, plan.probe)}  {reply}")
    failures = []
    if redis_check.error is not None:
        failures.append(f"FAILED at redis: {redis_check.error}")
    if not isinstance(outcome, Delivered):
        failures.append(f"FAILED at {reply.step}: {reply}")
    return lines + (failures or ["OK"])


def as_json(
    settings: Settings,
    plan: Plan,
    redis_check: RedisCheck,
    report: DeliveryReport,
    passed: bool,
) -> dict[str, Any]:
    """The report as `--json` prints it: ok, settings, redis, steps, outcome."""
    steps = [_step_json(report.resolution, plan.destination, "")]
    for attempt in report.attempts:
        steps.extend(_step_json(r, attempt.host, attempt.address) for r in attempt.steps)
    [outcome] = report.outcomes
    reply = outcome.reply
    return {
        "ok": passed,
        "settings": {"ok": True, "delivery": settings.delivery.value, "helo": settings.helo_name},
        "redis": {
            "ok": redis_check.error is None,
            "url": redis_check.url,
            "error": redis_check.error,
        },
        "destination": plan.destination,
        "sender": plan.message.sender,
        "recipient": plan.recipient,
        "probe": plan.probe,
        "steps": steps,
        "outcome": {
            "result": _result(outcome, plan.probe),
            "step": str(reply.step),
            "code": reply.code,
            "enhanced": reply.enhanced,
            "text": reply.text,
        },
    }


def _result(outcome: Outcome, probe: bool) -> str:
    match outcome:
        case Delivered():
            return "accepted" if probe else "delivered"
        case Deferred():
            return "deferred"
        case Bounced():
            return "bounced"
        case _:
            assert_never(outcome)


def _step_line(record: StepRecord, where: str) -> str:
    reply = record.reply
    detail = " ".join(part for part in (reply.enhanced, reply.text) if part)
    return (
        f"{reply.step:<12} {reply.code:<3}  {record.command:<10} {where}  "
        f"{record.ms:.1f} ms  {detail}"
    )


def _step_json(record: StepRecord, host: str, address: str) -> dict[str, Any]:
    reply = record.reply
    return {
        "step": str(reply.step),
        "command": record.command,
        "host": host,
        "address": address,
        "code": reply.code,
        "enhanced": reply.enhanced,
        "text": reply.text,
        "ms": round(record.ms, 1),
    }
