"""A throwaway redis-server for a benchmark, persisting like a production deployment would.

The tests' `RedisServer` (127.0.0.1, a free port, its own directory, stopped by PID) with an
append-only file fsynced once a second (`appendonly yes`, `appendfsync everysec`, Redis's
recommended durability/speed trade-off) instead of no persistence, so the benchmark pays for
the AOF writes a real deployment pays for. redis-server takes the last value of a repeated
option, so these arguments override the tests' `--appendonly no`.
"""

from __future__ import annotations

import redis

from tests.support.redis_server import RedisServer

PERSISTENCE = "appendonly yes, appendfsync everysec"


class BenchRedis(RedisServer):
    """redis-server on loopback with an AOF fsynced every second."""

    def _arguments(self, port: int) -> list[str]:
        return [*super()._arguments(port), "--appendonly", "yes", "--appendfsync", "everysec"]


def used_memory(client: redis.Redis) -> int:
    """Bytes Redis has allocated for data and overhead now (INFO memory: used_memory)."""
    info = client.info("memory")
    return int(info["used_memory"])


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since Redis started (INFO commandstats; script-inner calls included)."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict)
    }
