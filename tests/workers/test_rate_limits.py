"""workers/rate_limits.py against a real Redis: GCRA slots and reservations, connection leases,
penalties after throttling replies, and the throttling-reply table.

The limiter's clock is Redis TIME, so tests assert on `retry_after` right after exhausting a
slot and sleep only a few hundred milliseconds where a lease, a slot or a penalty must pass.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Mapping

import pytest
import redis

from settings import Rate
from workers.model.throttling import Granted, Throttled, ThrottleReason, is_throttling
from workers.traffic.rate_limits import DEFAULT_TUNING, Limiter, LimiterTuning

DEST = "example.org"
TAT_KEY = f"mailroom:rate:tat:{DEST}"
CONN_KEY = f"mailroom:rate:conn:{DEST}"
SLOW_KEY = f"mailroom:rate:slow:{DEST}"
FIVE_A_SECOND = Rate(5, 1)
# Redis round trips between two calls make later waits a little shorter than the exact slot.
SLACK = 0.05


def _key() -> str:
    return uuid.uuid4().hex


def _limiter(
    client: redis.Redis,
    rates: Mapping[str, Rate] | None = None,
    connections: Mapping[str, int] | None = None,
    *,
    lease_ttl: float = 30.0,
    tuning: LimiterTuning = DEFAULT_TUNING,
) -> Limiter:
    return Limiter(
        client,
        rates=rates or {},
        connections=connections or {},
        lease_ttl=lease_ttl,
        tuning=tuning,
    )


def _wait(answer: Granted | Throttled) -> float:
    """0 for a grant, else the rate wait (a connection throttle here is a test failure)."""
    if isinstance(answer, Granted):
        return 0.0
    assert answer.reason in (ThrottleReason.RATE, ThrottleReason.SLOWDOWN), answer
    return answer.retry_after


# --- rate (GCRA with reservations) ---------------------------------------------------------------


def test_second_send_waits_one_interval(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, {DEST: FIVE_A_SECOND})
    assert limiter.acquire(DEST, _key()) == Granted(None)
    second = limiter.acquire(DEST, _key())
    assert isinstance(second, Throttled)
    assert second.reason == "rate"
    assert second.retry_after == pytest.approx(0.2, abs=SLACK)


def test_each_throttled_call_reserves_the_next_slot(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, {DEST: FIVE_A_SECOND})
    waits = [_wait(limiter.acquire(DEST, _key())) for _ in range(10)]
    assert waits[0] == 0.0
    for n, wait in enumerate(waits):
        assert wait == pytest.approx(0.2 * n, abs=SLACK)
    steps = [later - earlier for earlier, later in itertools.pairwise(waits)]
    assert all(step == pytest.approx(0.2, abs=SLACK) for step in steps), steps
    assert len(redis_client.keys("mailroom:rate:resv:*")) == 9


def test_a_reservation_is_kept_then_used_without_a_new_slot(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, {DEST: FIVE_A_SECOND})
    holder = _key()
    assert isinstance(limiter.acquire(DEST, _key()), Granted)
    first = _wait(limiter.acquire(DEST, holder))
    tat = redis_client.get(TAT_KEY)
    reservation = f"mailroom:rate:resv:{DEST}:{holder}"
    assert 60_000 < redis_client.pttl(reservation) <= 60_000 + 1000 * first + 1

    again = _wait(limiter.acquire(DEST, holder))
    assert 0 < again <= first  # the same slot, a little closer
    assert redis_client.get(TAT_KEY) == tat  # no second slot taken
    assert _wait(limiter.acquire(DEST, _key())) == pytest.approx(0.4, abs=SLACK)
    tat = redis_client.get(TAT_KEY)

    # Up to 50 ms early counts as due: a deferral scheduled on another clock need not overshoot.
    time.sleep(max(again - 0.03, 0))
    assert limiter.acquire(DEST, holder) == Granted(None)
    assert redis_client.get(TAT_KEY) == tat
    assert not redis_client.exists(reservation)


def test_reservations_stop_at_the_horizon(redis_client: redis.Redis) -> None:
    limiter = _limiter(
        redis_client, {DEST: FIVE_A_SECOND}, tuning=LimiterTuning(max_reservation_ahead=0.5)
    )
    waits = [_wait(limiter.acquire(DEST, _key())) for _ in range(3)]
    tat = redis_client.get(TAT_KEY)
    beyond = [_wait(limiter.acquire(DEST, _key())) for _ in range(3)]
    assert waits[2] == pytest.approx(0.4, abs=SLACK)
    assert all(wait == pytest.approx(0.6, abs=SLACK) for wait in beyond), beyond
    assert redis_client.get(TAT_KEY) == tat
    assert len(redis_client.keys("mailroom:rate:resv:*")) == 2


@pytest.mark.parametrize(
    ("rates", "destination", "interval"),
    [
        pytest.param({DEST: FIVE_A_SECOND}, DEST, 0.2, id="own-entry"),
        pytest.param({"*": Rate(2, 1)}, DEST, 0.5, id="wildcard-for-unknown"),
        pytest.param({"*": Rate(2, 1), DEST: FIVE_A_SECOND}, DEST, 0.2, id="own-beats-wildcard"),
        pytest.param({"other.example": FIVE_A_SECOND}, DEST, None, id="unlimited"),
        pytest.param({}, DEST, None, id="no-limits-at-all"),
        pytest.param({DEST: Rate(30, 60)}, DEST, 2.0, id="thirty-a-minute"),
        pytest.param({"Example.ORG": FIVE_A_SECOND}, "EXAMPLE.org", 0.2, id="case-insensitive"),
    ],
)
def test_rate_lookup(
    redis_client: redis.Redis, rates: dict[str, Rate], destination: str, interval: float | None
) -> None:
    limiter = _limiter(redis_client, rates)
    assert limiter.acquire(destination, _key()) == Granted(None)
    second = limiter.acquire(destination, _key())
    if interval is None:
        assert second == Granted(None)
    else:
        assert _wait(second) == pytest.approx(interval, abs=SLACK)


def test_no_sliding_second_holds_more_than_the_rate(redis_client: redis.Redis) -> None:
    """Callers retrying on `retry_after` never get more than 5 + 1 grants into any 1 s window.

    The +1 is the window's boundary: slots 0.0, 0.2, …, 1.0 are six grants within a closed
    1 s window (and a reservation may be used up to 50 ms early), yet no six-slot run shorter
    than 1 s exists.
    """
    limiter = _limiter(redis_client, {DEST: FIVE_A_SECOND})
    grants: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 2.0

    def caller() -> None:
        key = _key()
        for _ in range(500):  # bounded even if the limiter never answered "wait"
            if time.monotonic() >= deadline:
                return
            answer = limiter.acquire(DEST, key)
            if isinstance(answer, Granted):
                with lock:
                    grants.append(time.monotonic())
                key = _key()
            else:
                # Retry early on purpose: the reservation must hold until its slot.
                time.sleep(min(answer.retry_after, 0.07))

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    grants.sort()
    busiest = max(
        sum(1 for later in grants[start:] if later - grants[start] <= 1.0)
        for start in range(len(grants))
    )
    assert len(grants) >= 5
    assert busiest <= 5 + 1, grants


# --- connection cap -------------------------------------------------------------------------------


def test_connection_cap_grants_up_to_the_cap(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, connections={DEST: 2})
    first, second = limiter.connection_lease(DEST), limiter.connection_lease(DEST)
    assert isinstance(first, Granted)
    assert isinstance(second, Granted)
    assert first.lease is not None
    assert second.lease is not None
    assert first.lease != second.lease
    third = limiter.connection_lease(DEST)
    assert isinstance(third, Throttled)
    assert third.reason == "connections"
    assert third.retry_after == 1.0  # leases of 30 s: the cap on the suggested wait
    limiter.release_lease(DEST, first.lease)
    assert redis_client.zcard(CONN_KEY) == 1
    assert isinstance(limiter.connection_lease(DEST), Granted)
    assert redis_client.zcard(CONN_KEY) == 2


@pytest.mark.parametrize(
    ("connections", "destination", "capped"),
    [
        pytest.param({"*": 1}, DEST, True, id="wildcard"),
        pytest.param({"*": 1, DEST: 5}, DEST, False, id="own-beats-wildcard"),
        pytest.param({"other.example": 1}, DEST, False, id="uncapped"),
    ],
)
def test_connection_cap_lookup(
    redis_client: redis.Redis, connections: dict[str, int], destination: str, capped: bool
) -> None:
    limiter = _limiter(redis_client, connections=connections)
    limiter.connection_lease(destination)
    second = limiter.connection_lease(destination)
    assert isinstance(second, Throttled) is capped


def test_uncapped_destination_has_no_lease(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client)
    assert limiter.connection_lease(DEST) == Granted(None)
    assert not redis_client.exists(CONN_KEY)


def test_leases_of_a_killed_holder_expire(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, connections={DEST: 2}, lease_ttl=0.3)
    assert isinstance(limiter.connection_lease(DEST), Granted)
    assert isinstance(limiter.connection_lease(DEST), Granted)
    # Neither lease is released: their holder "died".
    refused = limiter.connection_lease(DEST)
    assert isinstance(refused, Throttled)
    assert refused.retry_after == pytest.approx(0.3, abs=SLACK)
    time.sleep(0.2)
    soon = limiter.connection_lease(DEST)
    assert soon == Throttled(0.2, ThrottleReason.CONNECTIONS)  # the floor on the suggested wait
    time.sleep(0.15)
    assert isinstance(limiter.connection_lease(DEST), Granted)
    assert 0 < redis_client.pttl(CONN_KEY) <= 1300  # the set itself goes once its leases have


def test_never_more_connections_than_the_cap(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, connections={DEST: 2})
    lock = threading.Lock()
    held = 0
    most = 0
    grants = 0

    def worker() -> None:
        nonlocal held, most, grants
        for _ in range(40):
            answer = limiter.connection_lease(DEST)
            if isinstance(answer, Throttled):
                continue
            assert answer.lease is not None
            with lock:
                held += 1
                most = max(most, held)
                grants += 1
            time.sleep(0.002)
            with lock:
                held -= 1
            limiter.release_lease(DEST, answer.lease)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2
    assert grants >= 2
    assert redis_client.zcard(CONN_KEY) == 0


def test_a_rate_slot_takes_no_connection_lease(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, {DEST: FIVE_A_SECOND}, {DEST: 1})
    assert limiter.acquire(DEST, _key()) == Granted(None)
    holder = _key()
    assert _wait(limiter.acquire(DEST, holder)) > 0  # takes a reservation
    assert not redis_client.exists(CONN_KEY)
    # The cap is untouched by either: its one connection is still there to open.
    assert isinstance(limiter.connection_lease(DEST), Granted)


# --- slow-down after throttling replies ---------------------------------------------------------


def test_penalty_spaces_an_unlimited_destination(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client)
    assert limiter.acquire(DEST, _key()) == Granted(None)
    assert limiter.acquire(DEST, _key()) == Granted(None)
    assert limiter.penalize(DEST) == 1.0
    assert 119_000 < redis_client.pttl(SLOW_KEY) <= 120_000
    # The throttled send was just now, so the next one waits a full interval.
    waits = [_wait(limiter.acquire(DEST, _key())) for _ in range(3)]
    assert waits == pytest.approx([1.0, 2.0, 3.0], abs=SLACK)


def test_a_delivery_held_by_the_slow_down_names_the_reply_that_caused_it(
    redis_client: redis.Redis,
) -> None:
    limiter = _limiter(redis_client)
    limiter.penalize(DEST, "421 4.7.0")

    answer = limiter.acquire(DEST, _key())

    assert isinstance(answer, Throttled)
    assert (answer.reason, answer.cause) == (ThrottleReason.SLOWDOWN, "421 4.7.0")
    # A configured rate slower than the penalty is what holds deliveries back, not the penalty.
    slower = _limiter(redis_client, {"other.example": Rate(1, 3)})
    slower.penalize("other.example", "421 4.7.0")
    slower.acquire("other.example", _key())
    held = slower.acquire("other.example", _key())
    assert isinstance(held, Throttled)
    assert (held.reason, held.cause) == (ThrottleReason.RATE, "")


def test_penalties_double_up_to_a_minute(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client)
    spacings = [limiter.penalize(DEST) for _ in range(9)]
    assert spacings == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert redis_client.get(SLOW_KEY) == b"60000"


@pytest.mark.parametrize(
    ("rate", "spacing"),
    [
        pytest.param(FIVE_A_SECOND, 1.0, id="penalty-slower-than-rate"),
        pytest.param(Rate(1, 3), 3.0, id="rate-slower-than-penalty"),
    ],
)
def test_penalty_never_speeds_a_destination_up(
    redis_client: redis.Redis, rate: Rate, spacing: float
) -> None:
    limiter = _limiter(redis_client, {DEST: rate})
    limiter.penalize(DEST)
    first = _wait(limiter.acquire(DEST, _key()))
    second = _wait(limiter.acquire(DEST, _key()))
    assert second - first == pytest.approx(spacing, abs=SLACK)


def test_penalty_lapses_on_its_own(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, tuning=LimiterTuning(slowdown_ttl=0.5))
    limiter.penalize(DEST)
    holder = _key()
    assert _wait(limiter.acquire(DEST, holder)) == pytest.approx(1.0, abs=SLACK)
    time.sleep(0.55)
    assert not redis_client.exists(SLOW_KEY)
    assert limiter.acquire(DEST, holder) == Granted(None)  # its reservation no longer matters
    assert limiter.acquire(DEST, _key()) == Granted(None)
    assert limiter.acquire(DEST, _key()) == Granted(None)


def test_penalty_applies_to_its_destination_only(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client)
    limiter.penalize("OTHER.example")
    assert redis_client.exists("mailroom:rate:slow:other.example")
    assert limiter.acquire(DEST, _key()) == Granted(None)
    assert limiter.acquire(DEST, _key()) == Granted(None)


# --- construction and the throttling-reply table ------------------------------------------------


@pytest.mark.parametrize(
    ("connections", "lease_ttl"),
    [
        pytest.param({DEST: 0}, 30.0, id="zero-cap"),
        pytest.param({}, 0.0, id="zero-lease"),
    ],
)
def test_bad_limits_are_refused(
    redis_client: redis.Redis, connections: dict[str, int], lease_ttl: float
) -> None:
    with pytest.raises(ValueError, match="must be"):
        _limiter(redis_client, connections=connections, lease_ttl=lease_ttl)


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "throttling"),
    [
        # Server-wide: the server closes the session, or says it takes no more for now.
        (421, "", "Service not available", True),
        (421, "4.7.0", "Try again later, closing connection", True),
        (421, "4.3.2", "Service shutting down", True),
        (432, "4.3.2", "STOREDRV.Deliver; mailbox server is too busy", True),
        (452, "4.3.2", "Error: too many messages from 192.0.2.1", True),
        (451, "4.3.2", "System not accepting network messages", True),
        (421, "4.7.28", "unusual rate of unsolicited mail", True),
        (450, "4.7.1", "Error: too many recipients from 192.0.2.1", True),
        (451, "4.7.0", "Too many connections from your IP", True),
        (451, "4.7.500", "Server busy. Please try again later from [192.0.2.1]", True),
        (452, "4.7.0", "Rate limit exceeded", True),
        # One recipient's business: greylisting, a full or busy mailbox, a recipient limit.
        (451, "4.7.1", "greylisted, try again later", False),
        (450, "4.7.1", "<a@example.org>: Recipient address rejected: Greylisted", False),
        (451, "4.7.1", "Please try again later", False),
        (451, "4.7.1", "", False),
        (450, "4.2.0", "Greylisted, see http://postgrey.schweikert.ch/", False),
        (450, "4.2.1", "receiving mail at a rate that prevents additional messages", False),
        (452, "4.2.2", "mailbox full", False),
        (452, "4.5.3", "Error: too many recipients", False),
        (451, "4.3.0", "local error in processing", False),
        (451, "", "", False),
        (432, "4.7.12", "A password transition is needed", False),
        (432, "", "", False),
        (454, "4.7.0", "TLS not available due to local problem", False),
        # Mailroom's own replies about the connection, not a server asking for less.
        (421, "4.4.1", "connection refused", False),
        (421, "4.4.2", "connection dropped", False),
        (421, "4.4.7", "delivery took longer than 600 s", False),
        (421, "4.7.5", "TLS handshake failed", False),
        (550, "5.7.1", "too many recipients", False),
        (554, "5.7.0", "rate limited", False),
        (250, "2.0.0", "ok", False),
    ],
)
def test_is_throttling(code: int, enhanced: str, text: str, throttling: bool) -> None:
    assert is_throttling(code, enhanced, text) is throttling
