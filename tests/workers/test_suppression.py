"""The suppression list in a real Redis: entries, expiry, case folding, and the claim's look-up."""

from __future__ import annotations

import redis

from workers.model.outcome import Bounced, Delivered
from workers.model.reply import Reply, Step
from workers.model.report import DeliveryReport, StepRecord
from workers.queue.status import StatusStore
from workers.queue.suppression import (
    KEY,
    Entry,
    Suppression,
    SuppressionList,
    active_entries,
    entry_of,
    expiry,
)

NOW = 1_800_000_000.0
UNKNOWN = Reply(550, "5.1.1", "unknown user", Step.RCPT_TO)


def test_entries_are_kept_by_address_with_ascii_case_folded(redis_client: redis.Redis) -> None:
    listing = SuppressionList(redis_client)
    listing.add([Entry("Zoe@Example.TEST", "gone", "operator", NOW)])
    entry = listing.get("zoe@example.test", NOW)
    assert entry is not None
    assert entry.address == "Zoe@Example.TEST"
    assert redis_client.hkeys(KEY) == [b"zoe@example.test"]
    assert listing.remove(["ZOE@example.test", "other@example.test"]) == ["ZOE@example.test"]
    assert redis_client.exists(KEY) == 0


def test_an_expired_entry_is_absent_and_pruned_when_listed(redis_client: redis.Redis) -> None:
    listing = SuppressionList(redis_client)
    listing.add(
        [
            Entry("old@example.test", "gone", "bounce", NOW - 100, expires=NOW - 1),
            Entry("new@example.test", "gone", "bounce", NOW, expires=expiry(NOW, 30)),
            Entry("ever@example.test", "gone", "operator", NOW),
        ]
    )
    assert listing.get("old@example.test", NOW) is None
    assert listing.size() == 3
    assert sorted(e.address for e in listing.entries(NOW)) == [
        "ever@example.test",
        "new@example.test",
    ]
    assert listing.size() == 2  # the expired one went as it was met
    entry = listing.get("new@example.test", NOW)
    assert entry is not None
    assert entry.expires == NOW + 30 * 86400


def test_garbage_in_the_list_is_ignored_not_fatal(redis_client: redis.Redis) -> None:
    redis_client.hset(KEY, "bad@example.test", "{not json")
    redis_client.hset(KEY, "half@example.test", '{"address": "half@example.test"}')
    assert entry_of(b"{not json") is None
    assert list(SuppressionList(redis_client).entries(NOW)) == []
    assert active_entries([("bad@example.test", b"[]")], NOW) == {}


def test_the_claim_reads_the_list_with_the_status_in_one_script(redis_client: redis.Redis) -> None:
    status = StatusStore(redis_client, ttl=3600)
    status.create(
        "m1",
        "app@x.test",
        {"A@one.test": "one.test", "b@one.test": "one.test", "c@two.test": "two.test"},
        NOW,
    )
    [claim] = status.claims([("m1", "one.test")])
    assert claim.pending == ["A@one.test", "b@one.test"]
    assert claim.listed == {}
    SuppressionList(redis_client).add(
        [Entry("a@ONE.test", "gone", "operator", NOW), Entry("c@two.test", "x", "operator", NOW)]
    )
    [claim, unknown] = status.claims([("m1", "one.test"), ("nope", "one.test")])
    assert claim.pending == ["A@one.test", "b@one.test"]
    assert list(claim.listed) == ["A@one.test"]  # c@two.test is another destination's
    assert unknown.state is None
    assert unknown.pending == []


def test_only_hard_bounces_make_entries_with_their_reply(redis_client: redis.Redis) -> None:
    report = DeliveryReport(
        "one.test",
        (
            Bounced("gone@one.test", UNKNOWN),
            Bounced("full@one.test", Reply(552, "5.2.2", "mailbox full", Step.RCPT_TO)),
            Delivered("ok@one.test", Reply(250, "2.0.0", "ok", Step.DATA)),
        ),
        StepRecord("-", UNKNOWN, 0.0),
        (),
    )
    suppression = Suppression(SuppressionList(redis_client), 7)
    [entry] = suppression.entries_for("m1", report, NOW)
    assert entry == Entry(
        "gone@one.test",
        "550 5.1.1 unknown user",
        "bounce",
        NOW,
        expires=NOW + 7 * 86400,
        code=550,
        enhanced="5.1.1",
        message_id="m1",
    )
    assert "on the suppression list since 2027-01-15" in entry.reply().text
    assert entry.reply().enhanced == "5.1.1"
    suppression.add([entry])
    assert SuppressionList(redis_client).get("gone@one.test", NOW) == entry
