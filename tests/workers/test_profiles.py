"""The relay profile folds the relay's limits into the traffic settings; the operator's win."""

from __future__ import annotations

from settings import Rate, Settings
from workers.traffic.profiles import traffic


def test_office365_profile_limits_the_relay() -> None:
    limits = traffic(
        Settings(delivery="relay", relay_host="smtp.office365.test", relay_profile="office365")
    )
    assert limits.rates["relay"] == Rate(30, 60)
    assert limits.connections["relay"] == 3
    assert limits.connections["*"] == 20
    assert limits.max_recipients == 500


def test_operator_values_win_over_the_profile() -> None:
    limits = traffic(
        Settings(
            delivery="relay",
            relay_host="smtp.office365.test",
            relay_profile="office365",
            rate_limits='{"relay": "10/m"}',
            max_connections='{"relay": 1}',
        )
    )
    assert (limits.rates["relay"], limits.connections["relay"]) == (Rate(10, 60), 1)


def test_no_profile_no_recipient_limit() -> None:
    limits = traffic(Settings(rate_limits='{"*": "5/s"}'))
    assert limits.rates == {"*": Rate(5, 1)}
    assert limits.max_recipients is None
