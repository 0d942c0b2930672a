"""Fixtures of the engine's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from workers.smtp.connection_pool import ConnectionPool


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    """A connection pool like a worker's (100 messages a connection, 5 s idle), closed after."""
    pool = ConnectionPool(max_messages=100, idle_timeout=5)
    yield pool
    await pool.close()
