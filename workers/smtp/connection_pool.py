"""Open SMTP connections kept between deliveries: Postfix's connection cache, per worker process.

After a transaction, a healthy connection is parked here under its key (server address, port,
TLS policy, AUTH account) instead of being closed with QUIT; the next delivery to that server
takes it, sends RSET, and goes straight to MAIL FROM, saving the TCP and TLS handshakes, EHLO and
AUTH. A connection is parked at most `idle_timeout` seconds (then QUIT and closed), carries at
most `max_messages` transactions, and lives at most `max_lifetime` seconds, like Postfix's
`smtp_connection_cache_time_limit`, `smtp_connection_reuse_count_limit` and
`smtp_connection_reuse_time_limit`.

MAX_CONNECTIONS counts open connections, parked ones included, and the pool alone moves their
cluster-wide leases (`workers.traffic.rate_limits`, through `workers.smtp.slot.Leases`), so the
leases held in Redis are the connections open.
A delivery holds a `Slot`: the lease of the one connection it may open, while it has none open.
Opening moves the slot's lease into the connection (`attach`); a connection the session drops
(RSET failed, the server hung up) gives it back to the slot for its replacement (`detach`); a
parked connection keeps it, and returns it to Redis once it is closed (idle, too old, worker
shutdown). A slot that is empty when its delivery needs a new connection (it moved on to the
next MX host after parking the first host's connection) is filled from the cap, or else from an
idle parked connection to the same destination, closed first (`fill`). Whatever a slot still
holds when its delivery ends goes back to Redis (`free`). A delivery that found the cap full
waits in `take_any` for one of this worker's connections to its destination to come free
(`workers.smtp.waiting`).
`max_lifetime` must stay below the lease TTL minus the session deadline, so a lease never
expires under a live connection.

The pool belongs to one event loop (the worker process's, `workers.runtime`) and is only used
from it, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib

from workers.model.throttling import Granted
from workers.smtp.connection import Connection, PoolKey
from workers.smtp.parking import Parking
from workers.smtp.slot import Acquire, Handover, Leases, Release, Slot
from workers.smtp.waiting import Waiters


class ConnectionPool:
    """Parks idle connections by key; hands back the most recently used one first."""

    def __init__(
        self,
        *,
        max_messages: int,
        idle_timeout: float,
        max_lifetime: float = 60.0,
        release: Release | None = None,
        acquire: Acquire | None = None,
    ) -> None:
        """`release(destination, lease)` gives back a closed connection's lease (blocking I/O:
        it runs in the loop's default executor)."""
        self._max_messages = max_messages
        self._idle_timeout = idle_timeout
        self._max_lifetime = max_lifetime
        self.leases = Leases(acquire, release)
        self._waiters = Waiters(self.leases)
        self._parked = Parking()
        self._loop: asyncio.AbstractEventLoop | None = None

    def use_cap(self, acquire: Acquire, release: Release) -> None:
        """Take leases from, and give them back to, the cluster-wide connection cap."""
        self.leases.acquire, self.leases.release = acquire, release

    def take(self, key: PoolKey) -> Connection | None:
        """A parked connection for `key` that still looks alive, or None."""
        self._check_loop()
        # Most recently parked first: it is the least likely to have been timed out by the
        # server, and the rest age out, so a burst's extra connections close by themselves.
        while (connection := self._parked.newest(key)) is not None:
            if connection.usable and not self._too_old(connection):
                return connection
            self._retire(key, connection)
        return None

    def waiting(self, destination: str) -> int:
        """How many deliveries wait for a connection to `destination` to come free."""
        return self._waiters.waiting(destination)

    def take_parked(self, destination: str) -> Handover | None:
        """A parked connection to any server of `destination`, or None."""
        self._check_loop()
        for key in self._parked.keys(destination):
            connection = self.take(key)
            if connection is not None:
                return Handover(key, connection, None)
        return None

    async def take_any(self, destination: str, wait: float) -> Handover | None:
        """A connection of `destination` that comes free within `wait` seconds (or the lease
        of one that closed), or None."""
        parked = self.take_parked(destination)
        if parked is not None:
            return parked
        return await self._waiters.wait(destination, wait)

    def give(self, key: PoolKey, connection: Connection) -> bool:
        """Park `connection` for the next delivery to `key`; False when it must be closed instead.

        The caller keeps ownership (and closes it) when this returns False.
        """
        loop = self._check_loop()
        if (
            not connection.usable
            or connection.transactions >= self._max_messages
            or self._too_old(connection)
        ):
            return False
        if self._waiters.hand(key.destination, Handover(key, connection, None)):
            return True  # straight to a waiting delivery
        expiry = loop.call_later(self._idle_timeout, self._expire, key, connection)
        self._parked.park(key, connection, expiry)
        return True

    def attach(self, slot: Slot, connection: Connection) -> None:
        """`Leases.attach`: the connection opened for `slot` takes its lease."""
        self.leases.attach(slot, connection)

    def detach(self, slot: Slot, connection: Connection) -> None:
        """`Leases.detach`: close a connection given up; its lease goes to `slot`."""
        self.leases.detach(slot, connection)

    async def free(self, slot: Slot) -> None:
        """`Leases.free`: give back to Redis the lease `slot` holds."""
        await self.leases.free(slot)

    async def fill(self, slot: Slot) -> bool:
        """Make `slot` able to open a connection: a lease from the cap, else the lease of an idle
        parked connection to the same destination, closed first. False: the cap is full and
        nothing here is idle."""
        self._check_loop()
        if slot.held:
            return True
        granted = await self.leases.ask(slot.destination)
        if granted is None:
            slot.hold(None)
            return True
        if isinstance(granted, Granted):
            slot.hold(granted.lease)
            return True
        # The least recently used one: the next delivery would take the newest.
        connection = self._parked.oldest(slot.destination)
        if connection is None:
            return False
        # Closed before its lease moves: the server never sees the new one beside it.
        if connection.usable:
            await connection.quit()
        connection.close()
        lease, connection.lease = connection.lease, None
        slot.hold(lease)
        return True

    def idle(self, key: PoolKey | None = None) -> int:
        """How many connections are parked (for `key`, or in all)."""
        return self._parked.count(key)

    async def close(self) -> None:
        """QUIT every parked connection (worker shutdown); waits for the QUITs under way."""
        self._waiters.stop()
        for key, connection in self._parked.drain():
            self._retire(key, connection)
        await self.leases.settle()

    def _expire(self, key: PoolKey, connection: Connection) -> None:
        self._parked.remove(key, connection)
        self._retire(key, connection)

    def _retire(self, key: PoolKey, connection: Connection) -> None:
        """QUIT (in the background) and close a connection leaving the pool; its lease goes
        back once it is closed."""
        if connection.usable:
            loop = asyncio.get_running_loop()
            self.leases.track(loop.create_task(self._quit(key, connection)))
        else:
            connection.close()
            self.leases.give_back(key, connection)

    async def _quit(self, key: PoolKey, connection: Connection) -> None:
        await connection.quit()
        lease, connection.lease = connection.lease, None
        if lease is not None:
            await self.leases.give(key.destination, lease)  # in this task: `close` waits for it

    def _too_old(self, connection: Connection) -> bool:
        return asyncio.get_running_loop().time() - connection.opened >= self._max_lifetime

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        """The pool's loop; connections of a loop that is gone are dropped, never reused."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            for _, connection in self._parked.drain():
                with contextlib.suppress(RuntimeError):  # that loop may be closed
                    connection.close()
            self._waiters.forget()
            self._loop = loop
        return loop
