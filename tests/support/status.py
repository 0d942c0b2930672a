"""Recording one delivery's results in a status store, as tests write them by hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from workers.model.reply import Reply
from workers.model.states import RecipientState
from workers.queue.status import Record, StatusStore


def record_one(
    store: StatusStore,
    message_id: str,
    outcome_by_address: Mapping[str, tuple[RecipientState, Reply]],
    attempt_json: Sequence[Mapping[str, Any]],
    next_attempt: int | None,
) -> None:
    """`StatusStore.record_many` for one delivery, with no due time."""
    store.record_many([Record(message_id, outcome_by_address, attempt_json, next_attempt, None)])
