"""What Flower shows of a task: `mailroom flower` loads this file as Flower's `--conf`.

Delivery tasks carry ids and destinations only, but `mailroom.notify` (the intake task for
producers that are not Python) carries the notification's fields, addresses and body included,
as its keyword arguments (docs/contract.md). Flower would show them on its tasks pages; its
`format_task` hook replaces them with their field names before any page or API answer is built,
and hides every argument of any task that is not Mailroom's own (the producer's events task).
Tornado executes this file and takes `format_task` from it, so it defines nothing else public.
"""

from __future__ import annotations

import ast
from typing import Any

_NOTIFY_TASK = "mailroom.notify"  # tasks.routing.NOTIFY_TASK, without importing Celery here
_DELIVER_TASK = "mailroom.deliver"  # ids and destinations only: shown as they are


def format_task(task: Any) -> Any:
    """Hide a notification's content (keep the field names, drop the values), and every
    argument of a task that is not Mailroom's: the producer's EVENTS_TASK, on the same broker,
    gets delivery events, recipient addresses included."""
    name = getattr(task, "name", None)
    if name == _NOTIFY_TASK:
        task.args = "()"
        task.kwargs = _field_names(getattr(task, "kwargs", None))
    elif name != _DELIVER_TASK:
        task.args = "(…hidden…)"
        task.kwargs = "{…hidden…}"
    return task


def _field_names(kwargs: object) -> str:
    fields: object = kwargs
    if isinstance(kwargs, str):  # events carry a repr of the dict
        try:
            fields = ast.literal_eval(kwargs)
        except (ValueError, SyntaxError):
            return "{…hidden…}"
    if isinstance(fields, dict):
        return "{" + ", ".join(f"{name}: …" for name in sorted(map(str, fields))) + "}"
    return "{…hidden…}"
