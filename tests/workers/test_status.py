"""workers/status.py against a real Redis: the record's shape, forward-only states, requeue."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import redis

from tests.support.status import record_one
from workers.model.reply import Code, Reply, Step
from workers.model.states import RecipientState
from workers.queue.status import (
    ATTEMPTS_KEPT,
    DeliveryState,
    MessageState,
    Record,
    StatusStore,
    can_transition,
    iso_time,
    message_state,
)

TTL = 7200
NOW = 1_700_000_000.123456  # more digits than Lua's cjson keeps (14), to catch rounding
S = RecipientState

OK = Reply(Code.OK, "2.0.0", "queued as 4Fxyz", Step.DATA)
GREYLISTED = Reply(Code.LOCAL_ERROR, "4.7.1", "greylisted, try again later", Step.RCPT_TO)
UNKNOWN = Reply(Code.MAILBOX_UNAVAILABLE, "5.1.1", "no such user", Step.RCPT_TO)

RECIPIENTS = {
    "a@example.org": "example.org",
    "b@example.org": "example.org",
    "c@example.net": "example.net",
}


def _attempt(destination: str, reply: Reply, at: float = NOW) -> dict[str, Any]:
    return {
        "at": iso_time(at),
        "destination": destination,
        "host": f"mx1.{destination}",
        "steps": [
            {
                "step": str(reply.step),
                "code": reply.code,
                "enhanced": reply.enhanced,
                "text": reply.text,
                "ms": 1.5,
            }
        ],
    }


@pytest.fixture
def store(redis_client: redis.Redis) -> StatusStore:
    return StatusStore(redis_client, ttl=TTL)


@pytest.fixture
def message_id(store: StatusStore) -> str:
    message_id = uuid.uuid4().hex
    store.create(message_id, "app@example.com", RECIPIENTS, NOW)
    return message_id


def _states(store: StatusStore, message_id: str) -> dict[str, str]:
    view = store.view(message_id)
    assert view is not None
    return {r["address"]: r["state"] for r in view["recipients"]}


def _pending(store: StatusStore, message_id: str, destination: str) -> list[str]:
    """The addresses of `destination` still queued or deferred, as a claim reads them."""
    [claim] = store.claims([(message_id, destination)])
    return claim.pending


def test_new_message_view_has_the_status_json_shape(store: StatusStore, message_id: str) -> None:
    assert store.view(message_id) == {
        "id": message_id,
        "state": "queued",
        "recipients": [
            {
                "address": "a@example.org",
                "destination": "example.org",
                "state": "queued",
                "code": None,
                "enhanced": "",
                "reply": "",
            },
            {
                "address": "b@example.org",
                "destination": "example.org",
                "state": "queued",
                "code": None,
                "enhanced": "",
                "reply": "",
            },
            {
                "address": "c@example.net",
                "destination": "example.net",
                "state": "queued",
                "code": None,
                "enhanced": "",
                "reply": "",
            },
        ],
        "attempts": [],
        "created": iso_time(NOW),
        "subject": None,  # no content stored in this test
    }
    assert store.progress([message_id]) != [None]


def test_create_leaves_an_existing_record_as_it_is(store: StatusStore, message_id: str) -> None:
    # A producer racing another with the same idempotency key must not put recipients that
    # were delivered meanwhile back to queued (they would get the message twice).
    record_one(
        store, message_id, {"a@example.org": (S.DELIVERED, OK)}, [_attempt("example.org", OK)], 2
    )

    assert store.create(message_id, "other@example.com", {"z@example.com": "example.com"}, NOW) is (
        False
    )

    assert _states(store, message_id) == {
        "a@example.org": "delivered",
        "b@example.org": "queued",
        "c@example.net": "queued",
    }
    assert store.delivery(message_id, "example.org") == DeliveryState(2, NOW)
    assert len(store.view(message_id)["attempts"]) == 1  # type: ignore[index]


def test_recorded_attempt_shows_in_the_view(store: StatusStore, message_id: str) -> None:
    attempt = _attempt("example.org", OK)
    record_one(
        store,
        message_id,
        {"a@example.org": (S.DELIVERED, OK), "b@example.org": (S.DELIVERED, OK)},
        [attempt],
        None,
    )
    view = store.view(message_id)
    assert view is not None
    assert view["state"] == "in_progress"
    assert view["attempts"] == [attempt]
    assert set(view["attempts"][0]) == {"at", "destination", "host", "steps"}
    assert set(view["attempts"][0]["steps"][0]) == {"step", "code", "enhanced", "text", "ms"}
    assert view["recipients"][0] == {
        "address": "a@example.org",
        "destination": "example.org",
        "state": "delivered",
        "code": 250,
        "enhanced": "2.0.0",
        "reply": "queued as 4Fxyz",
    }


def test_unknown_message(store: StatusStore) -> None:
    unknown = uuid.uuid4().hex
    assert store.view(unknown) is None
    assert store.progress([unknown]) == [None]
    assert _pending(store, unknown, "example.org") == []
    assert store.delivery(unknown, "example.org") is None
    record_one(
        store, unknown, {"a@example.org": (S.DELIVERED, OK)}, [_attempt("example.org", OK)], 2
    )
    assert store.view(unknown) is None
    assert store.progress([unknown]) == [None]


def test_every_key_has_the_ttl(
    store: StatusStore, message_id: str, redis_client: redis.Redis
) -> None:
    record_one(
        store,
        message_id,
        {"a@example.org": (S.DEFERRED, GREYLISTED)},
        [_attempt("example.org", GREYLISTED)],
        2,
    )
    for name in ("msg", "rcpt", "dlv", "attempts"):
        assert 0 < redis_client.ttl(f"mailroom:{name}:{message_id}") <= TTL, name


def test_pending_is_queued_and_deferred_of_that_destination(
    store: StatusStore, message_id: str
) -> None:
    assert _pending(store, message_id, "example.org") == ["a@example.org", "b@example.org"]
    assert _pending(store, message_id, "example.net") == ["c@example.net"]
    assert _pending(store, message_id, "example.com") == []
    record_one(store, message_id, {"a@example.org": (S.DEFERRED, GREYLISTED)}, [], None)
    assert _pending(store, message_id, "example.org") == ["a@example.org", "b@example.org"]
    record_one(store, message_id, {"b@example.org": (S.DELIVERED, OK)}, [], None)
    assert _pending(store, message_id, "example.org") == ["a@example.org"]
    record_one(store, message_id, {"a@example.org": (S.BOUNCED, UNKNOWN)}, [], None)
    assert _pending(store, message_id, "example.org") == []
    record_one(store, message_id, {"c@example.net": (S.EXPIRED, GREYLISTED)}, [], None)
    assert _pending(store, message_id, "example.net") == []


def test_delivery_state_and_next_attempt(store: StatusStore, message_id: str) -> None:
    assert store.delivery(message_id, "example.org") == DeliveryState(1, NOW)
    assert store.delivery(message_id, "example.com") is None
    record_one(store, message_id, {"a@example.org": (S.DEFERRED, GREYLISTED)}, [], 2)
    record_one(store, message_id, {"a@example.org": (S.DEFERRED, GREYLISTED)}, [], 13)
    # first_queued keeps every digit: the attempt counter is rewritten without re-encoding it.
    assert store.delivery(message_id, "example.org") == DeliveryState(13, NOW)
    assert store.delivery(message_id, "example.net") == DeliveryState(1, NOW)


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        pytest.param([S.DELIVERED], S.DEFERRED, id="delivered-not-back-to-deferred"),
        pytest.param([S.DEFERRED, S.DELIVERED], S.DEFERRED, id="deferred-delivered-not-deferred"),
        pytest.param([S.BOUNCED], S.DELIVERED, id="bounced-not-delivered"),
        pytest.param([S.EXPIRED], S.DEFERRED, id="expired-not-deferred"),
        pytest.param([S.DEFERRED], S.QUEUED, id="deferred-not-back-to-queued"),
        pytest.param([S.DELIVERED], S.BOUNCED, id="delivered-not-bounced"),
        pytest.param([S.BOUNCED], S.EXPIRED, id="bounced-not-expired"),
        pytest.param([], S.QUEUED, id="queued-not-queued-again"),
    ],
)
def test_illegal_transitions_are_skipped_and_logged(
    store: StatusStore,
    message_id: str,
    path: list[RecipientState],
    refused: RecipientState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    replies = {S.DELIVERED: OK, S.DEFERRED: GREYLISTED, S.BOUNCED: UNKNOWN, S.EXPIRED: GREYLISTED}
    for state in path:
        record_one(store, message_id, {"a@example.org": (state, replies[state])}, [], None)
    before = store.view(message_id)
    assert before is not None
    with caplog.at_level(logging.WARNING, logger="workers.queue.status"):
        record_one(
            store,
            message_id,
            {"a@example.org": (refused, OK), "b@example.org": (S.DELIVERED, OK)},
            [],
            None,
        )
    after = store.view(message_id)
    assert after is not None
    assert after["recipients"][0] == before["recipients"][0]  # a@ unchanged
    assert after["recipients"][1]["state"] == "delivered"  # b@ in the same call moved
    current = path[-1] if path else S.QUEUED
    assert [r.getMessage() for r in caplog.records] == [
        f"message {message_id}: recipient a@example.org not moved from {current} to {refused}"
    ]


def test_deferred_again_updates_the_last_reply(store: StatusStore, message_id: str) -> None:
    record_one(store, message_id, {"a@example.org": (S.DEFERRED, GREYLISTED)}, [], None)
    busy = Reply(Code.MAILBOX_BUSY, "4.2.0", "mailbox busy", Step.RCPT_TO)
    record_one(store, message_id, {"a@example.org": (S.DEFERRED, busy)}, [], None)
    view = store.view(message_id)
    assert view is not None
    assert view["recipients"][0] | {} == {
        "address": "a@example.org",
        "destination": "example.org",
        "state": "deferred",
        "code": 450,
        "enhanced": "4.2.0",
        "reply": "mailbox busy",
    }


def test_unknown_address_is_skipped(
    store: StatusStore, message_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="workers.queue.status"):
        record_one(store, message_id, {"z@example.org": (S.DELIVERED, OK)}, [], None)
    assert "z@example.org" not in _states(store, message_id)
    assert "unknown recipient" in caplog.text


def test_reply_text_survives_lua_json(store: StatusStore, message_id: str) -> None:
    text = 'Postfach voll – bitte später "erneut" versuchen: https://example.org/a\\b\ttab'
    odd = Reply(Code.MAILBOX_BUSY, "", text, Step.RCPT_TO)
    record_one(store, message_id, {"a@example.org": (S.DEFERRED, odd)}, [], None)
    view = store.view(message_id)
    assert view is not None
    assert (view["recipients"][0]["reply"], view["recipients"][0]["enhanced"]) == (text, "")


def test_requeue_puts_dead_recipients_of_one_destination_back(
    store: StatusStore, message_id: str
) -> None:
    record_one(
        store,
        message_id,
        {"a@example.org": (S.BOUNCED, UNKNOWN), "b@example.org": (S.DELIVERED, OK)},
        [],
        None,
    )
    record_one(store, message_id, {"c@example.net": (S.EXPIRED, GREYLISTED)}, [], 4)
    later = NOW + 1000.5
    assert store.requeue(message_id, "example.org", later) == ["a@example.org"]
    assert _states(store, message_id) == {
        "a@example.org": "queued",
        "b@example.org": "delivered",
        "c@example.net": "expired",
    }
    assert store.delivery(message_id, "example.org") == DeliveryState(2, later)
    assert store.requeue(message_id, "example.net", later) == ["c@example.net"]
    assert store.delivery(message_id, "example.net") == DeliveryState(5, later)
    assert _pending(store, message_id, "example.org") == ["a@example.org"]
    # Queued again, it moves forward as any queued recipient does.
    record_one(store, message_id, {"a@example.org": (S.DELIVERED, OK)}, [], None)
    assert _states(store, message_id)["a@example.org"] == "delivered"


def test_requeue_with_nothing_dead_changes_nothing(store: StatusStore, message_id: str) -> None:
    record_one(store, message_id, {"a@example.org": (S.DEFERRED, GREYLISTED)}, [], None)
    assert store.requeue(message_id, "example.org", NOW + 5) == []
    assert store.delivery(message_id, "example.org") == DeliveryState(1, NOW)
    assert store.requeue(uuid.uuid4().hex, "example.org", NOW + 5) == []


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        pytest.param({}, MessageState.QUEUED, id="all-queued"),
        pytest.param({"a": S.DEFERRED}, MessageState.IN_PROGRESS, id="one-deferred"),
        pytest.param({"a": S.DELIVERED}, MessageState.IN_PROGRESS, id="one-final-rest-queued"),
        pytest.param(
            {"a": S.DELIVERED, "b": S.DELIVERED, "c": S.DEFERRED},
            MessageState.IN_PROGRESS,
            id="final-and-deferred",
        ),
        pytest.param(
            {"a": S.DELIVERED, "b": S.DELIVERED, "c": S.DELIVERED},
            MessageState.DELIVERED,
            id="all-delivered",
        ),
        pytest.param(
            {"a": S.DELIVERED, "b": S.BOUNCED, "c": S.EXPIRED},
            MessageState.PARTIALLY_DELIVERED,
            id="partially-delivered",
        ),
        pytest.param(
            {"a": S.BOUNCED, "b": S.EXPIRED, "c": S.BOUNCED}, MessageState.FAILED, id="failed"
        ),
    ],
)
def test_message_state_is_derived_from_recipients(
    store: StatusStore,
    message_id: str,
    outcomes: dict[str, RecipientState],
    expected: MessageState,
) -> None:
    addresses = {"a": "a@example.org", "b": "b@example.org", "c": "c@example.net"}
    replies = {S.DELIVERED: OK, S.DEFERRED: GREYLISTED, S.BOUNCED: UNKNOWN, S.EXPIRED: GREYLISTED}
    record_one(
        store,
        message_id,
        {addresses[key]: (state, replies[state]) for key, state in outcomes.items()},
        [],
        None,
    )
    view = store.view(message_id)
    assert view is not None
    assert view["state"] == expected.value
    states = [RecipientState(r["state"]) for r in view["recipients"]]
    assert message_state(states) is expected


def test_transition_table() -> None:
    # deleted: an operator; suppressed: the suppression list, at the claim
    onward = {S.DEFERRED, S.DELIVERED, S.BOUNCED, S.EXPIRED, S.DELETED, S.SUPPRESSED}
    for current in RecipientState:
        allowed = {new for new in RecipientState if can_transition(current, new)}
        expected = onward if current in {S.QUEUED, S.DEFERRED} else set()
        assert allowed == expected, current


def test_attempts_are_capped_keeping_the_newest(store: StatusStore, message_id: str) -> None:
    attempts = [_attempt("example.org", GREYLISTED, at=NOW + n) for n in range(ATTEMPTS_KEPT + 30)]
    for start in range(0, len(attempts), 40):
        record_one(store, message_id, {}, attempts[start : start + 40], None)
    view = store.view(message_id)
    assert view is not None
    assert ATTEMPTS_KEPT == 100
    assert view["attempts"] == attempts[-ATTEMPTS_KEPT:]


def test_create_on_a_pipeline_waits_for_the_caller(
    store: StatusStore, redis_client: redis.Redis
) -> None:
    message_id = uuid.uuid4().hex
    pipe = redis_client.pipeline(transaction=True)
    store.create(message_id, "app@example.com", {"x@example.org": "example.org"}, NOW, pipe=pipe)
    assert store.progress([message_id]) == [None]
    pipe.execute()
    assert _pending(store, message_id, "example.org") == ["x@example.org"]


def test_mark_enqueued(store: StatusStore, message_id: str, redis_client: redis.Redis) -> None:
    assert not store.is_enqueued(message_id)
    assert store.mark_all_enqueued([message_id]) == 1
    assert store.is_enqueued(message_id)
    unknown = uuid.uuid4().hex
    assert store.mark_all_enqueued([unknown]) == 0
    assert not store.is_enqueued(unknown)
    assert redis_client.exists(f"mailroom:msg:{unknown}") == 0


def test_create_needs_recipients(store: StatusStore) -> None:
    with pytest.raises(ValueError, match="recipient"):
        store.create(uuid.uuid4().hex, "app@example.com", {}, NOW)


def _recipient(store: StatusStore, message_id: str, address: str) -> dict[str, Any]:
    view = store.view(message_id)
    assert view is not None
    [found] = [r for r in view["recipients"] if r["address"] == address]
    return dict(found)


def test_held_back_then_tried_again_shows_why_and_when_only_while_it_applies(
    store: StatusStore, message_id: str
) -> None:
    gate = Reply(Code.LOCAL_ERROR, "4.4.5", "throttled by Mailroom: rate limit", Step.GATE)
    store.throttle_many([(message_id, ["a@example.org"], gate, NOW + 5)])
    a = _recipient(store, message_id, "a@example.org")
    assert (a["state"], a["code"], a["throttled"], a["next_attempt"]) == (
        "deferred",
        451,
        gate.text,
        iso_time(NOW + 5),
    )

    # A real attempt: greylisted, due again in a minute; the gate's reason is gone.
    store.record_many(
        [Record(message_id, {"a@example.org": (S.DEFERRED, GREYLISTED)}, [], 2, NOW + 60)]
    )
    a = _recipient(store, message_id, "a@example.org")
    assert (a["code"], a["enhanced"], a["next_attempt"]) == (451, "4.7.1", iso_time(NOW + 60))
    assert "throttled" not in a

    # Held back again: the server's reply stays the last reply, the gate's is why it waits.
    store.throttle_many([(message_id, ["a@example.org"], gate, NOW + 65)])
    a = _recipient(store, message_id, "a@example.org")
    assert (a["reply"], a["throttled"]) == (GREYLISTED.text, gate.text)

    record_one(store, message_id, {"a@example.org": (S.DELIVERED, OK)}, [], None)
    a = _recipient(store, message_id, "a@example.org")
    assert a["state"] == "delivered"
    assert "throttled" not in a
    assert "next_attempt" not in a
