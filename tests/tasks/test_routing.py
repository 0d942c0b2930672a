"""Tests for tasks/routing.py: destinations, consistent sharding, queue names, --shards parsing."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.routing import (
    DELIVER_TASK,
    INTAKE_QUEUE,
    NOTIFY_TASK,
    all_shard_queues,
    destination_of,
    jump_hash,
    parse_shards,
    shard_of,
    shard_queue,
)

# --- destination_of ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("ok@example.com", "example.com"),
        ("ok@EXAMPLE.Com", "example.com"),
        ("Case.Kept@Mail.Example.ORG", "mail.example.org"),
        ("ok@bücher.example", "xn--bcher-kva.example"),
        ("ok@BÜCHER.example", "xn--bcher-kva.example"),  # UTS #46 maps case before encoding
        ("ok@xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("ok@XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("üser@bücher.example", "xn--bcher-kva.example"),  # SMTPUTF8 addresses keep U-labels
        ('"a@b"@example.com', "example.com"),  # the domain follows the last "@"
    ],
)
def test_destination_in_mx_mode_is_the_a_label_domain(address: str, expected: str) -> None:
    assert destination_of(address, "mx") == expected


@pytest.mark.parametrize("address", ["ok@example.com", "ok@bücher.example", "not an address"])
def test_destination_in_relay_mode_is_relay(address: str) -> None:
    assert destination_of(address, "relay") == "relay"


def test_two_spellings_of_one_domain_share_a_destination_and_shard() -> None:
    first = destination_of("a@Bücher.Example", "mx")
    second = destination_of("b@xn--bcher-kva.example", "mx")
    assert first == second
    assert shard_of(first, 8) == shard_of(second, 8)


@pytest.mark.parametrize(
    ("address", "mode", "message"),
    [
        ("no-at-sign", "mx", "has no '@'"),
        ("ok@", "mx", "empty domain"),
        ("ok@exa mple.com", "mx", "not a DNS label"),
        ("ok@example.com", "smtp", "unknown delivery mode 'smtp'"),
    ],
)
def test_destination_of_rejects(address: str, mode: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        destination_of(address, mode)


# --- shard_of / jump_hash ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "buckets", "expected"),
    # The reference vectors of the Go implementations (dgryski/go-jump jump_test.go).
    [(1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361), (256, 1024, 520)],
)
def test_jump_hash_matches_the_reference_vectors(key: int, buckets: int, expected: int) -> None:
    assert jump_hash(key, buckets) == expected


@pytest.mark.parametrize(
    ("destination", "shards", "expected"),
    # Computed once. Producers and workers of different versions must agree, so a change of
    # key or hash is a breaking change, and this test says so.
    [
        ("example.com", 8, 0),
        ("gmail.com", 8, 4),
        ("xn--bcher-kva.example", 8, 2),
        ("relay", 8, 5),
        ("a.test", 8, 7),
        ("example.com", 1000, 896),
        ("gmail.com", 1000, 747),
        ("relay", 1000, 107),
    ],
)
def test_shard_of_is_stable(destination: str, shards: int, expected: int) -> None:
    assert shard_of(destination, shards) == expected


@pytest.mark.parametrize("shards", [0, -1])
def test_shard_of_needs_a_shard(shards: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("example.com", shards)


@given(destination=st.text(max_size=80), shards=st.integers(min_value=1, max_value=10_000))
def test_shard_of_is_in_range(destination: str, shards: int) -> None:
    assert 0 <= shard_of(destination, shards) < shards


@given(destination=st.text(max_size=80), shards=st.integers(min_value=1, max_value=500))
def test_growing_by_one_shard_moves_keys_only_to_the_new_shard(
    destination: str, shards: int
) -> None:
    before = shard_of(destination, shards)
    after = shard_of(destination, shards + 1)
    assert after in (before, shards)


@given(key=st.integers(min_value=0, max_value=2**64 - 1), shards=st.integers(1, 500))
def test_jump_hash_moves_keys_only_to_the_new_bucket(key: int, shards: int) -> None:
    assert jump_hash(key, shards + 1) in (jump_hash(key, shards), shards)


DOMAINS = [f"customer-{n}.example" for n in range(10_000)]


def test_distribution_is_roughly_uniform() -> None:
    counts = Counter(shard_of(domain, 8) for domain in DOMAINS)
    assert sorted(counts) == list(range(8))
    # 1250 expected per shard, standard deviation about 33: these bounds are over 4 sigma.
    assert all(1100 <= count <= 1400 for count in counts.values()), counts


def test_growing_from_8_to_9_shards_moves_about_a_ninth() -> None:
    moved = [domain for domain in DOMAINS if shard_of(domain, 8) != shard_of(domain, 9)]
    assert 900 <= len(moved) <= 1350  # 10 000 / 9 ≈ 1111; a modulo hash would move ~8900
    assert {shard_of(domain, 9) for domain in moved} == {8}


# --- names ------------------------------------------------------------------------------------


def test_queue_and_task_names() -> None:
    assert INTAKE_QUEUE == "mailroom.intake"
    assert DELIVER_TASK == "mailroom.deliver"
    assert NOTIFY_TASK == "mailroom.notify"
    assert shard_queue(3) == "mailroom.shard.3"
    assert all_shard_queues(3) == ["mailroom.shard.0", "mailroom.shard.1", "mailroom.shard.2"]
    assert all_shard_queues(0) == []


# --- parse_shards -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "shards", "expected"),
    [
        ("0", 8, [0]),
        ("7", 8, [7]),
        ("0-3,7", 8, [0, 1, 2, 3, 7]),
        ("7,0-3", 8, [0, 1, 2, 3, 7]),
        ("2-2", 8, [2]),
        ("0-7", 8, list(range(8))),
        ("1,1,0-2,2", 8, [0, 1, 2]),
        (" 1 , 4-5 ", 8, [1, 4, 5]),
        ("007", 8, [7]),
    ],
)
def test_parse_shards_accepts(spec: str, shards: int, expected: list[int]) -> None:
    assert parse_shards(spec, shards) == expected


@pytest.mark.parametrize(
    ("spec", "shards", "message"),
    [
        ("", 8, "--shards: empty"),
        ("  ", 8, "--shards: empty"),
        ("8", 8, "--shards: 8 is not below MAILROOM_SHARDS=8"),
        ("9", 8, "--shards: 9 is not below MAILROOM_SHARDS=8"),
        ("0-3,6-9", 8, "--shards: 9 is not below MAILROOM_SHARDS=8"),
        ("0-99999999999999", 8, "--shards: 99999999999999 is not below MAILROOM_SHARDS=8"),
        ("x", 8, "--shards: 'x' is not a number or range"),
        ("-1", 8, "--shards: '-1' is not a number or range"),
        ("1-", 8, "--shards: '1-' is not a number or range"),
        ("1-2-3", 8, "--shards: '1-2-3' is not a number or range"),
        ("1.5", 8, "--shards: '1.5' is not a number or range"),
        ("٣", 8, "--shards: '٣' is not a number or range"),  # int() would take Arabic digits
        ("5-3", 8, "--shards: range '5-3' is reversed"),
        ("0,,1", 8, "--shards: '0,,1' has an empty item"),
        ("0,", 8, "--shards: '0,' has an empty item"),
    ],
)
def test_parse_shards_rejects(spec: str, shards: int, message: str) -> None:
    with pytest.raises(ValueError, match=r"^--shards: ") as caught:
        parse_shards(spec, shards)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
