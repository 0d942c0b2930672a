"""The report of `mailroom check`: one line per check and SMTP step then the verdict, or the same
as one JSON object (`--json`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_never

from settings import DeliveryMode, Settings
from workers.model.outcome import Bounced, Deferred, Delivered, Outcome, Suppressed
from workers.model.report import StepRecord

if TYPE_CHECKING:
    from tasks.cli.check import Checked


def as_lines(settings: Settings, checked: Checked) -> list[str]:
    """The human-readable report: one line per check and per SMTP step, then the verdict."""
    from tasks.cli.check_token import auth_fix, token_line
    from workers.delivery.relay_access import auth_refusal

    plan, redis_check, report, token = checked.plan, checked.redis, checked.report, checked.token
    mode = settings.delivery.value
    if settings.delivery is DeliveryMode.RELAY:
        mode += f" {settings.relay_host}:{settings.relay_port} ({settings.relay_security.value})"
    lines = [f"{'settings':<12} ok    delivery={mode} helo={settings.helo_name}"]
    if redis_check.error is None:
        lines.append(f"{'redis':<12} ok    {redis_check.url}")
    else:
        lines.append(f"{'redis':<12} FAIL  {redis_check.url}: {redis_check.error}")
    what = "probe, stops after RCPT TO" if plan.probe else "sends a test message"
    if token is not None:
        lines.extend(token_line(token))
    lines.append(
        f"{'delivery':<12} to    {plan.destination}: {plan.message.sender} -> "
        f"{plan.recipient} ({what})"
    )
    if report is None:
        failures = [] if redis_check.error is None else [f"FAILED at redis: {redis_check.error}"]
        problem = token.problem() if token is not None else None
        return [*lines, *failures, f"FAILED at token: {problem}"]
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
        failed = f"FAILED at {reply.step}: {reply}"
        refused = auth_refusal(report)
        fix = None if refused is None else auth_fix(refused, token)
        failures.append(failed if fix is None else f"{failed}; to fix: {fix}")
    return lines + (failures or ["OK"])


def as_json(settings: Settings, checked: Checked) -> dict[str, Any]:
    """The report as `--json` prints it: ok, settings, redis, token, steps, outcome."""
    from tasks.cli.check_token import token_json

    plan, redis_check, report, token = checked.plan, checked.redis, checked.report, checked.token
    shown: dict[str, Any] = {
        "ok": checked.passed,
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
    }
    if token is not None:
        shown["token"] = token_json(token)
    if report is None:
        return {**shown, "steps": [], "outcome": None}
    steps = [_step_json(report.resolution, plan.destination, "")]
    for attempt in report.attempts:
        steps.extend(_step_json(r, attempt.host, attempt.address) for r in attempt.steps)
    [outcome] = report.outcomes
    reply = outcome.reply
    return {
        **shown,
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
        case Suppressed():
            return "suppressed"
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
