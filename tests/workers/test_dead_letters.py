"""workers/dead_letters.py against a real Redis: add, merge, list, show, take, purge, prune."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import redis

from tests.support.redis_server import RedisServer
from workers.model.reply import Code, Reply, Step
from workers.queue.dead_letters import DeadLetters, DeadReason, dead_recipient
from workers.queue.status import iso_time

TTL = 3600
NOW = 1_700_000_000.0
UNKNOWN = Reply(Code.MAILBOX_UNAVAILABLE, "5.1.1", "no such user", Step.RCPT_TO)
FULL = Reply(Code.EXCEEDED_STORAGE, "5.2.2", "mailbox full", Step.RCPT_TO)
GREYLISTED = Reply(Code.LOCAL_ERROR, "4.7.1", "greylisted", Step.RCPT_TO)


def _id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def dlq(redis_client: redis.Redis) -> DeadLetters:
    return DeadLetters(redis_client, ttl=TTL)


def test_add_makes_an_entry_of_the_dlq_json_shape(dlq: DeadLetters) -> None:
    message_id = _id()
    dlq.add(message_id, "example.org", "bounced", [dead_recipient("a@example.org", UNKNOWN)], NOW)
    assert dlq.list() == [
        {
            "message_id": message_id,
            "destination": "example.org",
            "reason": "bounced",
            "recipients": [
                {
                    "address": "a@example.org",
                    "code": 550,
                    "enhanced": "5.1.1",
                    "reply": "no such user",
                    "reason": "bounced",
                }
            ],
            "at": iso_time(NOW),
        }
    ]
    assert iso_time(NOW) == "2023-11-14T22:13:20.000+00:00"
    assert dlq.count() == 1


def test_an_address_quoted_in_the_reply_keeps_only_its_domain(dlq: DeadLetters) -> None:
    message_id = _id()
    text = "<bob@example.org>: Recipient address rejected"
    quoted = Reply(Code.MAILBOX_UNAVAILABLE, "5.1.1", text, Step.RCPT_TO)
    dlq.add(message_id, "example.org", "bounced", [dead_recipient("bob@example.org", quoted)], NOW)
    [entry] = dlq.show(message_id)
    assert entry["recipients"][0]["address"] == "bob@example.org"
    assert entry["recipients"][0]["reply"] == "<*@example.org>: Recipient address rejected"


def test_add_merges_recipients_of_the_same_delivery(dlq: DeadLetters) -> None:
    message_id = _id()
    dlq.add(
        message_id,
        "example.org",
        DeadReason.BOUNCED,
        [dead_recipient("b@example.org", UNKNOWN), dead_recipient("a@example.org", UNKNOWN)],
        NOW,
    )
    dlq.add(
        message_id,
        "example.org",
        DeadReason.EXPIRED,
        [dead_recipient("c@example.org", GREYLISTED), dead_recipient("a@example.org", FULL)],
        NOW + 60,
    )
    [entry] = dlq.list()
    assert dlq.count() == 1
    assert entry["reason"] == "expired"
    assert entry["at"] == iso_time(NOW + 60)
    assert [(r["address"], r["code"], r["reason"]) for r in entry["recipients"]] == [
        ("a@example.org", 552, "expired"),
        ("b@example.org", 550, "bounced"),
        ("c@example.org", 451, "expired"),
    ]


def test_list_is_newest_first_and_limited(dlq: DeadLetters) -> None:
    ids = [_id() for _ in range(5)]
    for n, message_id in enumerate(ids):
        dlq.add(message_id, "example.org", "bounced", [dead_recipient("a@x.org", UNKNOWN)], NOW + n)
    assert [entry["message_id"] for entry in dlq.list()] == ids[::-1]
    assert [entry["message_id"] for entry in dlq.list(limit=2)] == [ids[4], ids[3]]
    assert dlq.list(limit=0) == []
    # A second death moves an entry to the front.
    dlq.add(ids[0], "example.org", "expired", [dead_recipient("b@x.org", GREYLISTED)], NOW + 9)
    assert dlq.list(limit=1)[0]["message_id"] == ids[0]


def test_show_returns_every_entry_of_one_message(dlq: DeadLetters) -> None:
    message_id, other = _id(), _id()
    dlq.add(message_id, "example.org", "bounced", [dead_recipient("a@example.org", UNKNOWN)], NOW)
    dlq.add(message_id, "relay", "expired", [dead_recipient("b@example.net", GREYLISTED)], NOW + 5)
    dlq.add(other, "example.org", "bounced", [dead_recipient("c@example.org", UNKNOWN)], NOW + 9)
    shown = dlq.show(message_id)
    assert [(e["destination"], e["reason"]) for e in shown] == [
        ("relay", "expired"),
        ("example.org", "bounced"),
    ]
    assert dlq.show(_id()) == []
    assert dlq.count() == 3  # show does not remove


def test_take_removes_and_returns(dlq: DeadLetters) -> None:
    message_id, other = _id(), _id()
    dlq.add(message_id, "example.org", "bounced", [dead_recipient("a@example.org", UNKNOWN)], NOW)
    dlq.add(message_id, "example.net", "bounced", [dead_recipient("b@example.net", UNKNOWN)], NOW)
    dlq.add(other, "example.org", "bounced", [dead_recipient("c@example.org", UNKNOWN)], NOW)
    taken = dlq.take(message_id)
    assert sorted(e["destination"] for e in taken) == ["example.net", "example.org"]
    assert dlq.show(message_id) == []
    assert dlq.take(message_id) == []
    assert [e["message_id"] for e in dlq.list()] == [other]
    assert dlq.count() == 1


def test_concurrent_takes_split_the_entries(redis_server: RedisServer) -> None:
    clients = [redis_server.client() for _ in range(2)]
    try:
        clients[0].flushall()
        message_id = _id()
        setup = DeadLetters(clients[0], ttl=TTL)
        for n in range(200):
            setup.add(
                message_id, f"d{n}.example", "bounced", [dead_recipient("a@x.org", UNKNOWN)], NOW
            )
        results: list[list[dict[str, Any]]] = [[], []]
        barrier = threading.Barrier(2)

        def take(index: int) -> None:
            store = DeadLetters(clients[index], ttl=TTL)
            barrier.wait()
            results[index] = store.take(message_id)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        destinations = [e["destination"] for result in results for e in result]
        assert sorted(destinations) == sorted(f"d{n}.example" for n in range(200))
        assert setup.count() == 0
    finally:
        for client in clients:
            client.close()


def test_concurrent_adds_to_one_delivery_lose_no_recipient(redis_server: RedisServer) -> None:
    clients = [redis_server.client() for _ in range(2)]
    try:
        clients[0].flushall()
        message_id = _id()
        barrier = threading.Barrier(2)

        def add(index: int) -> None:
            store = DeadLetters(clients[index], ttl=TTL)
            barrier.wait()
            for n in range(40):
                recipient = dead_recipient(f"r{index}-{n}@example.org", UNKNOWN)
                store.add(message_id, "example.org", "bounced", [recipient], NOW + n)

        threads = [threading.Thread(target=add, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        [entry] = DeadLetters(clients[0], ttl=TTL).show(message_id)
        assert len(entry["recipients"]) == 80
    finally:
        for client in clients:
            client.close()


def test_purge(dlq: DeadLetters, redis_client: redis.Redis) -> None:
    message_id, other = _id(), _id()
    dlq.add(message_id, "example.org", "bounced", [dead_recipient("a@example.org", UNKNOWN)], NOW)
    dlq.add(message_id, "example.net", "expired", [dead_recipient("b@example.net", FULL)], NOW)
    dlq.add(other, "example.org", "bounced", [dead_recipient("c@example.org", UNKNOWN)], NOW)
    assert dlq.purge(message_id) == 2
    assert dlq.purge(message_id) == 0
    assert dlq.count() == 1


def test_prune_drops_entries_older_than_the_ttl(dlq: DeadLetters) -> None:
    old, edge, young = _id(), _id(), _id()
    dlq.add(old, "example.org", "bounced", [dead_recipient("a@example.org", UNKNOWN)], NOW)
    dlq.add(edge, "example.org", "bounced", [dead_recipient("a@example.org", UNKNOWN)], NOW + 10)
    dlq.add(young, "example.org", "bounced", [dead_recipient("a@example.org", UNKNOWN)], NOW + 20)
    assert dlq.prune(NOW + 10 + TTL) == 1  # `edge` is exactly TTL old: kept
    assert [e["message_id"] for e in dlq.list()] == [young, edge]
    assert dlq.show(old) == []
    assert dlq.prune(NOW + 10 + TTL) == 0
    assert dlq.prune(NOW + 10 + TTL + 0.5) == 1
    assert [e["message_id"] for e in dlq.list()] == [young]


def test_bad_reason_is_refused(dlq: DeadLetters) -> None:
    with pytest.raises(ValueError, match="nope"):
        dlq.add(_id(), "example.org", "nope", [], NOW)
    assert dlq.count() == 0
