"""Flower's format_task hook: notification content never reaches Flower's pages."""

from __future__ import annotations

from types import SimpleNamespace

from tasks import flower_display
from tasks.routing import DELIVER_TASK, NOTIFY_TASK


def test_the_hook_names_the_notify_task_as_routing_does() -> None:
    assert flower_display._NOTIFY_TASK == NOTIFY_TASK


def test_notify_tasks_show_field_names_only() -> None:
    kwargs = "{'sender': 'app@example.com', 'to': ['zoe@example.org'], 'text': 'secret body'}"
    task = SimpleNamespace(name=NOTIFY_TASK, args="()", kwargs=kwargs)

    shown = flower_display.format_task(task)

    assert shown.kwargs == "{sender: …, text: …, to: …}"
    assert "zoe@" not in repr(vars(shown))
    assert "secret body" not in repr(vars(shown))


def test_unparsable_notify_kwargs_are_hidden_whole() -> None:
    task = SimpleNamespace(name=NOTIFY_TASK, args="('x@y.z',)", kwargs="{'to': ['x@y.z'], ...")
    shown = flower_display.format_task(task)
    assert shown.kwargs == "{…hidden…}"
    assert shown.args == "()"


def test_delivery_tasks_are_shown_as_they_are() -> None:
    args = "[['0123abcd', 'example.org', 1]]"
    task = SimpleNamespace(name=DELIVER_TASK, args=args, kwargs="{}")
    shown = flower_display.format_task(task)
    assert (shown.args, shown.kwargs) == (args, "{}")


def test_the_hook_names_the_deliver_task_as_routing_does() -> None:
    assert flower_display._DELIVER_TASK == DELIVER_TASK


def test_another_apps_task_such_as_the_events_task_is_hidden_whole() -> None:
    event = {"type": "delivered", "recipient": "zoe@example.org"}
    task = SimpleNamespace(name="producer.mail_events", args=repr([[event]]), kwargs="{}")
    shown = flower_display.format_task(task)
    assert (shown.args, shown.kwargs) == ("(…hidden…)", "{…hidden…}")
