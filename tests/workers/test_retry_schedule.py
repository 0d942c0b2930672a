"""workers/retry_schedule.py: delay per attempt, jitter, retry_after, the max_age deadline."""

from __future__ import annotations

import random

import pytest

from workers.queue.retry_schedule import RetryPolicy, next_due

DELAYS = (60, 300, 1800)
T0 = 1_700_000_000.0  # first queued
DAY = 86_400.0
_POLICY_FIELDS = ("delays", "max_age", "jitter", "rng")


@pytest.mark.parametrize(
    ("attempt", "now", "retry_after", "max_age", "expected"),
    [
        pytest.param(1, T0, None, DAY, T0 + 60, id="first-delay"),
        pytest.param(2, T0 + 100, None, DAY, T0 + 400, id="second-delay"),
        pytest.param(3, T0 + 500, None, DAY, T0 + 2300, id="last-delay"),
        pytest.param(4, T0 + 500, None, DAY, T0 + 2300, id="last-repeats"),
        pytest.param(40, T0 + 500, None, DAY, T0 + 2300, id="last-repeats-far"),
        pytest.param(1, T0, 7.5, DAY, T0 + 7.5, id="retry-after-replaces-delay"),
        pytest.param(3, T0 + 10, 0.25, DAY, T0 + 10.25, id="retry-after-below-delay"),
        pytest.param(1, T0, 0.0, DAY, T0, id="retry-after-zero"),
        pytest.param(3, T0 + 3000, None, 4000, T0 + 4000, id="clamped-to-deadline"),
        pytest.param(1, T0 + 3999, 30.0, 4000, T0 + 4000, id="retry-after-clamped"),
        pytest.param(1, T0 + 3999.5, None, 4000, T0 + 4000, id="just-before-deadline"),
        pytest.param(1, T0 + 4000, None, 4000, None, id="expired-exactly-at-max-age"),
        pytest.param(1, T0 + 4000, 1.0, 4000, None, id="expired-even-when-throttled"),
        pytest.param(5, T0 + 9999, None, 4000, None, id="expired-long-after"),
        pytest.param(1, T0, None, 0, None, id="max-age-zero"),
    ],
)
def test_next_due_without_jitter(
    attempt: int, now: float, retry_after: float | None, max_age: float, expected: float | None
) -> None:
    due = next_due(
        RetryPolicy(DELAYS, max_age, jitter=0.0),
        attempt=attempt,
        first_queued=T0,
        now=now,
        retry_after=retry_after,
    )
    assert due == expected


@pytest.mark.parametrize(
    ("attempt", "base"), [(1, 60), (2, 300), (3, 1800), (9, 1800)], ids=["1", "2", "3", "9"]
)
@pytest.mark.parametrize("jitter", [0.1, 0.5])
def test_jitter_stays_within_bounds_and_spreads(attempt: int, base: int, jitter: float) -> None:
    rng = random.Random(1234)
    delays = [
        next_due(
            RetryPolicy(DELAYS, DAY, jitter=jitter, rng=rng),
            attempt=attempt,
            first_queued=T0,
            now=T0,
        )
        for _ in range(500)
    ]
    offsets = [due - T0 for due in delays if due is not None]
    assert len(offsets) == 500
    assert all(base * (1 - jitter) <= offset <= base * (1 + jitter) for offset in offsets)
    # Spread over both halves of the window, not a constant.
    assert min(offsets) < base - base * jitter / 2
    assert max(offsets) > base + base * jitter / 2


def test_same_seed_same_schedule() -> None:
    def schedule(seed: int) -> list[float | None]:
        rng = random.Random(seed)
        return [
            next_due(RetryPolicy(DELAYS, DAY, rng=rng), attempt=n, first_queued=T0, now=T0)
            for n in range(1, 6)
        ]

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


def test_retry_after_is_never_jittered_below() -> None:
    rng = random.Random(99)
    dues = {
        next_due(
            RetryPolicy(DELAYS, DAY, jitter=0.5, rng=rng),
            attempt=2,
            first_queued=T0,
            now=T0 + 5,
            retry_after=12.0,
        )
        for _ in range(100)
    }
    assert dues == {T0 + 17.0}


def test_jitter_never_passes_the_deadline() -> None:
    rng = random.Random(5)
    for _ in range(200):
        due = next_due(
            RetryPolicy(DELAYS, 3000 + 1800, jitter=0.5, rng=rng),
            attempt=3,
            first_queued=T0,
            now=T0 + 3000,
        )
        assert due is not None
        assert T0 + 3000 + 900 <= due <= T0 + 4800


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attempt": 0}, "attempt"),
        ({"delays": ()}, "delays"),
        ({"delays": (60, -1)}, "delays"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"retry_after": -1.0}, "retry_after"),
        ({"now": float("nan")}, "finite"),
    ],
)
def test_bad_arguments_are_refused(changes: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "attempt": 1,
        "first_queued": T0,
        "now": T0,
        "delays": DELAYS,
        "max_age": DAY,
    }
    arguments.update(changes)
    policy = {name: arguments.pop(name) for name in _POLICY_FIELDS if name in arguments}
    with pytest.raises(ValueError, match=message):
        next_due(RetryPolicy(**policy), **arguments)  # type: ignore[arg-type]
