"""What a batch carries and hands back: the items of a task, a claimed delivery running under its
lease, what each handled delivery came to, and the error for results Redis would not take."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import redis

from workers.model.outcome import Suppressed
from workers.model.report import DeliveryReport
from workers.queue.disposition import Summary

Submit = Callable[[Coroutine[Any, Any, DeliveryReport]], "Future[DeliveryReport]"]


@dataclass(frozen=True, slots=True)
class Item:
    """One delivery a task carries: ids and a counter, never an address or a body."""

    message_id: str
    destination: str
    attempt: int


class UnrecordedError(redis.RedisError):
    """Redis did not take some finished deliveries' results within the recording window."""


@dataclass(frozen=True, slots=True)
class Running:
    """A claimed delivery: its item, when it was first queued, who it is for, and its lease;
    `suppressed`: the outcomes of its recipients on the suppression list, never sent to."""

    item: Item
    first_queued: float
    recipients: tuple[str, ...]
    lease: str
    suppressed: tuple[Suppressed, ...] = ()


@dataclass(frozen=True, slots=True)
class Handled:
    """One delivery the batch handled, and what it came to."""

    message_id: str
    destination: str
    summary: Summary

    def __str__(self) -> str:
        return f"{self.message_id} {self.destination}: {self.summary}"
