"""workers/deferred.py against a real Redis: due claims, exclusive claims, release, recovery."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from tests.support.redis_server import RedisServer
from workers.queue.deferred import CLAIMED_KEY, DEFERRED_KEY, DeferredEntry, DeferredSet

NOW = 1_700_000_000.0


def _id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def deferred(redis_client: redis.Redis) -> DeferredSet:
    return DeferredSet(redis_client)


def test_claim_due_takes_only_due_entries_earliest_first(deferred: DeferredSet) -> None:
    m1, m2, m3 = _id(), _id(), _id()
    deferred.defer(m1, "example.org", 2, NOW - 10)
    deferred.defer(m2, "relay", 5, NOW)  # due exactly now counts as due
    deferred.defer(m3, "example.net", 3, NOW + 0.001)
    assert deferred.claim_due(NOW) == [
        DeferredEntry(m1, "example.org", 2),
        DeferredEntry(m2, "relay", 5),
    ]
    assert deferred.claim_due(NOW) == []
    assert deferred.claim_due(NOW + 1) == [(m3, "example.net", 3)]
    assert len(deferred) == 3  # claimed, not yet released


def test_claim_due_respects_the_limit(deferred: DeferredSet) -> None:
    ids = [_id() for _ in range(7)]
    for n, message_id in enumerate(ids):
        deferred.defer(message_id, "example.org", 1, NOW - 100 + n)
    first = deferred.claim_due(NOW, limit=3)
    rest = deferred.claim_due(NOW, limit=10)
    assert [entry.message_id for entry in first + rest] == ids
    assert len(first) == 3


def test_release_forgets_claims(deferred: DeferredSet, redis_client: redis.Redis) -> None:
    m1, m2 = _id(), _id()
    deferred.defer(m1, "example.org", 2, NOW - 1)
    deferred.defer(m2, "example.org", 2, NOW - 1)
    claimed = deferred.claim_due(NOW)
    assert deferred.count() == 2
    deferred.release(claimed[:1])
    assert deferred.count() == 1
    deferred.release([])
    deferred.release(claimed)
    assert deferred.count() == 0
    assert redis_client.exists(DEFERRED_KEY, CLAIMED_KEY) == 0


def test_recover_returns_stale_claims_as_due_now(deferred: DeferredSet) -> None:
    old, fresh = _id(), _id()
    deferred.defer(old, "example.org", 3, NOW - 500)
    deferred.claim_due(NOW - 100)  # a sweeper claimed it and died
    deferred.defer(fresh, "example.org", 1, NOW - 40)
    deferred.claim_due(NOW - 30)  # a sweeper still working on it
    assert deferred.recover(NOW, older_than=60.0) == 1
    assert deferred.claim_due(NOW - 1) == []  # recovered entries are due at `now`, not before
    assert deferred.claim_due(NOW) == [DeferredEntry(old, "example.org", 3)]
    assert deferred.recover(NOW + 10, older_than=60.0) == 0
    assert deferred.recover(NOW + 200, older_than=60.0) == 2
    assert deferred.count() == 2


def test_defer_again_reschedules(deferred: DeferredSet) -> None:
    message_id = _id()
    deferred.defer(message_id, "example.org", 2, NOW - 5)
    deferred.defer(message_id, "example.org", 2, NOW + 50)
    assert deferred.count() == 1
    assert deferred.claim_due(NOW) == []
    assert deferred.claim_due(NOW + 50) == [(message_id, "example.org", 2)]


def test_remove_drops_every_entry_of_one_delivery(deferred: DeferredSet) -> None:
    message_id, other = _id(), _id()
    deferred.defer(message_id, "example.org", 2, NOW - 5)
    deferred.claim_due(NOW)  # one claimed ...
    deferred.defer(message_id, "example.org", 3, NOW + 5)  # ... and one waiting
    deferred.defer(message_id, "example.org.uk", 2, NOW + 5)  # a longer destination
    deferred.defer(other, "example.org", 2, NOW + 5)
    assert deferred.remove(message_id, "example.org") == 2
    assert deferred.count() == 2
    assert sorted(deferred.claim_due(NOW + 5)) == sorted(
        [DeferredEntry(message_id, "example.org.uk", 2), DeferredEntry(other, "example.org", 2)]
    )
    assert deferred.remove(message_id, "example.org") == 0


def test_separator_in_ids_is_refused(deferred: DeferredSet) -> None:
    with pytest.raises(ValueError, match=r"\|"):
        deferred.defer("a|b", "example.org", 1, NOW)


def _claim_concurrently(clients: list[redis.Redis]) -> list[list[DeferredEntry]]:
    """Every client claims due entries in its own thread, started together, until none are left."""
    got: list[list[DeferredEntry]] = [[] for _ in clients]
    barrier = threading.Barrier(len(clients))

    def claim(index: int) -> None:
        store = DeferredSet(clients[index])
        barrier.wait()
        while batch := store.claim_due(NOW, limit=7):
            got[index].extend(batch)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return got


def test_two_concurrent_claimers_never_get_the_same_entry(redis_server: RedisServer) -> None:
    clients = [redis_server.client() for _ in range(3)]
    try:
        clients[0].flushall()
        setup = DeferredSet(clients[0])
        for round_ in range(20):
            entries = {DeferredEntry(_id(), f"d{n % 7}.example", round_ + 1) for n in range(150)}
            for n, entry in enumerate(entries):
                setup.defer(*entry, due=NOW - n % 10)
            setup.defer(_id(), "later.example", 1, NOW + 60)  # not due: never claimed
            got = _claim_concurrently(clients[1:])
            first, second = set(got[0]), set(got[1])
            assert len(first) == len(got[0])
            assert len(second) == len(got[1])
            assert not first & second
            assert first | second == entries
            setup.release(entries)
            assert setup.count() == round_ + 1  # the entries not due yet
    finally:
        for client in clients:
            client.close()
