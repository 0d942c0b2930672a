"""Failed SMTP AUTH attempts per client address, counted in Redis across every listener process.

Policy (a fixed window, as fail2ban's): at most `max_failures` failed logins from one client
address within `window` seconds of its first failure. Once there, the address is refused at
AUTH, without its credentials being checked, until the window ends; a success does not reset the
count (a guessed password would otherwise buy more guesses). IPv6 clients are counted per /64,
the block one host or subscriber usually holds, so rotating addresses within it does not help;
IPv4-mapped IPv6 addresses count as their IPv4 address. Expiry is Redis's, so listeners' clocks
do not matter. A login takes its place in the count before its password is checked
(`reserve`) and gives it back when the password was right (`release`): parallel connections from
one address can never have more passwords checked than the limit allows.

Keys:
    mailroom:authfail:{address or IPv6 /64}   failures so far (integer), EXPIRE window
"""

from __future__ import annotations

import ipaddress

import redis

DEFAULT_MAX_FAILURES = 10
DEFAULT_WINDOW = 900  # seconds

_PREFIX = "mailroom:authfail:"
_IPV6_BLOCK = 64

# KEYS: the client's key. ARGV: max failures, window. Returns the count with this login in it,
# or -1 (the address is blocked, nothing counted).
_RESERVE = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[1], 0, 'EX', ARGV[2], 'NX')
return redis.call('INCR', KEYS[1])
"""
# KEYS: the client's key. Takes back one reserved place; a count back at 0 is dropped, so a
# window starts at a real failure. Never creates the key (its window may have ended meanwhile).
_RELEASE = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count <= 1 then redis.call('DEL', KEYS[1]) return 0 end
return redis.call('DECR', KEYS[1])
"""


def client_key(address: str) -> str:
    """The Redis key counting failures of the client at `address` (an IP address)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{_PREFIX}{address}"  # not an IP (a Unix socket peer): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"{_PREFIX}{ip.ipv4_mapped}"
        return f"{_PREFIX}{ipaddress.ip_network(f'{ip}/{_IPV6_BLOCK}', strict=False)}"
    return f"{_PREFIX}{ip}"


class AuthFailureLimiter:
    """Counts failed logins per client address and says when an address must be refused."""

    def __init__(
        self,
        client: redis.Redis,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if max_failures < 1 or window < 1:
            raise ValueError(f"max_failures and window must be >= 1 (got {max_failures}, {window})")
        self._redis = client
        self.max_failures = max_failures
        self.window = window
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)

    def reserve(self, address: str) -> int | None:
        """Count a login of `address` as failed before its password is checked; None when the
        address is blocked (nothing counted), else its failures in the window with this one.

        :raises redis.RedisError: Redis cannot answer (callers refuse the login then).
        """
        count = int(
            self._reserve(keys=[client_key(address)], args=[self.max_failures, self.window])
        )
        return None if count < 0 else count

    def release(self, address: str) -> None:
        """Take back the place `reserve` took: the password was right.

        :raises redis.RedisError: Redis cannot record it.
        """
        self._release(keys=[client_key(address)])

    def blocked(self, address: str) -> bool:
        """Whether `address` has used up its failures for the current window.

        :raises redis.RedisError: Redis cannot answer (callers refuse the login then).
        """
        count = self._redis.get(client_key(address))
        return count is not None and int(count) >= self.max_failures

    def record_failure(self, address: str) -> int:
        """Count one failed login of `address`; returns its failures in the current window.

        :raises redis.RedisError: Redis cannot record it.
        """
        key = client_key(address)
        with self._redis.pipeline(transaction=True) as pipe:
            # The window starts at the first failure: later ones leave its expiry alone.
            pipe.set(key, 0, ex=self.window, nx=True)
            pipe.incr(key)
            _, count = pipe.execute()
        return int(count)
