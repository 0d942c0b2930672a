"""Failed-login limiting per client address, on the real Redis of the test session."""

from __future__ import annotations

import pytest
import redis

from tasks.submission.auth_limits import AuthFailureLimiter, client_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "mailroom:authfail:192.0.2.7"),
        ("::ffff:192.0.2.7", "mailroom:authfail:192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "mailroom:authfail:2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "mailroom:authfail:2001:db8:1:2::/64"),
        ("fe80::1%eth0", "mailroom:authfail:fe80::/64"),
        ("unknown", "mailroom:authfail:unknown"),
    ],
)
def test_client_key(address: str, key: str) -> None:
    assert client_key(address) == key


def test_an_address_is_blocked_after_max_failures_until_the_window_ends(
    redis_client: redis.Redis,
) -> None:
    limiter = AuthFailureLimiter(redis_client, max_failures=3, window=120)
    assert not limiter.blocked("192.0.2.7")
    assert [limiter.record_failure("192.0.2.7") for _ in range(2)] == [1, 2]
    assert not limiter.blocked("192.0.2.7")
    assert limiter.record_failure("192.0.2.7") == 3
    assert limiter.blocked("192.0.2.7")
    assert not limiter.blocked("192.0.2.8")  # per address
    # The window runs from the first failure: later failures do not extend it.
    key = client_key("192.0.2.7")
    redis_client.expire(key, 30)
    limiter.record_failure("192.0.2.7")
    assert 0 < redis_client.ttl(key) <= 30
    redis_client.delete(key)  # what the expiry does when the window ends
    assert not limiter.blocked("192.0.2.7")


def test_the_count_is_shared_by_every_listener(redis_client: redis.Redis) -> None:
    one = AuthFailureLimiter(redis_client, max_failures=2, window=60)
    other = AuthFailureLimiter(redis_client, max_failures=2, window=60)
    one.record_failure("2001:db8::1")
    other.record_failure("2001:db8::2")  # the same /64
    assert one.blocked("2001:db8::3")
    assert redis_client.ttl(client_key("2001:db8::1")) > 0


def test_bad_limits_are_refused(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="max_failures"):
        AuthFailureLimiter(redis_client, max_failures=0)


def test_reserve_counts_before_the_check_and_release_gives_it_back(
    redis_client: redis.Redis,
) -> None:
    limiter = AuthFailureLimiter(redis_client, max_failures=2, window=120)
    key = client_key("192.0.2.9")
    assert [limiter.reserve("192.0.2.9") for _ in range(3)] == [1, 2, None]
    assert int(redis_client.get(key) or 0) == 2  # a blocked login is not counted
    limiter.release("192.0.2.9")
    assert int(redis_client.get(key) or 0) == 1
    limiter.release("192.0.2.9")
    assert redis_client.get(key) is None  # back at 0: the next failure opens a new window
    limiter.release("192.0.2.9")
    assert redis_client.get(key) is None  # never brought back without its expiry
