"""Open SMTP connections kept between deliveries: Postfix's connection cache, per worker process.

After a transaction, a healthy connection is parked here under its key (server address, port,
TLS policy, AUTH account) instead of being closed with QUIT; the next delivery to that server
takes it, sends RSET, and goes straight to MAIL FROM, saving the TCP and TLS handshakes, EHLO and
AUTH. A connection is parked at most `idle_timeout` seconds (then QUIT and closed), carries at
most `max_messages` transactions, and lives at most `max_lifetime` seconds, like Postfix's
`smtp_connection_cache_time_limit`, `smtp_connection_reuse_count_limit` and
`smtp_connection_reuse_time_limit`.

MAX_CONNECTIONS counts open connections, parked ones included, and the pool alone moves their
cluster-wide leases (`workers.traffic.rate_limits`), so the leases held in Redis are the
connections open.
A delivery holds a `Slot`: the lease of the one connection it may open, while it has none open.
Opening moves the slot's lease into the connection (`attach`); a connection the session drops
(RSET failed, the server hung up) gives it back to the slot for its replacement (`detach`); a
parked connection keeps it, and returns it to Redis once it is closed (idle, too old, worker
shutdown). A slot that is empty when its delivery needs a new connection (it moved on to the
next MX host after parking the first host's connection) is filled from the cap, or else from an
idle parked connection to the same destination, closed first (`fill`). Whatever a slot still
holds when its delivery ends goes back to Redis (`free`). A delivery that found the cap full
waits in `take_any` for one of this worker's connections to its destination to come free.
`max_lifetime` must stay below the lease TTL minus the session deadline, so a lease never
expires under a live connection.

The pool belongs to one event loop (the worker process's, `workers.runtime`) and is only used
from it, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from aiosmtplib import SMTP
from aiosmtplib.errors import SMTPException

from workers.model.throttling import Granted, Throttled
from workers.smtp.wire import Wire

_QUIT_TIMEOUT = 2.0  # a parked connection's QUIT is a courtesy: never wait long for it
_POLL_MIN = 0.05  # seconds between a waiting worker's asks for a connection lease
_POLL_MAX = 0.25


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What a parked connection can be reused for: the same server, TLS and account."""

    destination: str  # what the connection delivers for: a domain, or "relay"
    host: str
    address: str
    port: int
    tls: str | None  # the TlsPolicy's identity, None = plaintext
    account: str | None  # the AUTH user name, None = no AUTH


@dataclass(eq=False, slots=True)
class Connection:
    """One open, greeted (and, where asked, TLS-protected and authenticated) SMTP connection.

    aiosmtplib's `smtp` opened it and keeps what EHLO announced; once open, its `wire` carries
    every transaction.
    """

    smtp: SMTP
    transport: asyncio.Transport | None  # the TLS transport, aborted on close
    tls_active: bool
    opened: float  # event-loop time
    transactions: int = 0
    lease: str | None = None  # the cap lease it was opened under, held until closed (pool's)
    closed: bool = False
    wire: Wire | None = None  # set once the session is open
    pipelining: bool = False  # the server announced PIPELINING (RFC 2920)

    @property
    def usable(self) -> bool:
        if self.closed:
            return False
        return self.wire.usable if self.wire is not None else self.smtp.is_connected

    def close(self) -> None:
        """Drop the connection at once (no QUIT): nothing more is owed to the server."""
        if self.wire is not None:
            self.wire.abort("closed")
        self.smtp.close()
        # A graceful TLS shutdown would hold the socket for up to ssl_shutdown_timeout.
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    async def quit(self) -> None:
        """QUIT politely, briefly, then close whatever the server did."""
        if self.wire is not None:
            if self.wire.usable:
                await self.wire.quit(_QUIT_TIMEOUT)
        else:
            with contextlib.suppress(SMTPException, OSError, TimeoutError):
                if self.smtp.is_connected:
                    await asyncio.wait_for(self.smtp.quit(), _QUIT_TIMEOUT)
        self.close()


@dataclass(eq=False, slots=True)
class Slot:
    """A delivery's right to one open connection to `destination` while it has none open.

    `held`: the slot may open a connection now, under `lease` (None when the destination has no
    cap). Only the pool changes it.
    """

    destination: str
    held: bool = False
    lease: str | None = None

    def hold(self, lease: str | None) -> None:
        self.held, self.lease = True, lease

    def empty(self) -> str | None:
        """Leave the slot empty; returns the lease it held."""
        lease, self.held, self.lease = self.lease, False, None
        return lease


@dataclass(frozen=True, slots=True)
class Handover:
    """What a waiting delivery gets: a connection to use, or a lease to open one under."""

    key: PoolKey | None  # the connection's; None with a lease from the cap (any server)
    connection: Connection | None
    lease: str | None


class ConnectionPool:
    """Parks idle connections by key; hands back the most recently used one first."""

    def __init__(
        self,
        *,
        max_messages: int,
        idle_timeout: float,
        max_lifetime: float = 60.0,
        release: Callable[[str, str], None] | None = None,
        acquire: Callable[[str], Granted | Throttled] | None = None,
    ) -> None:
        """`release(destination, lease)` gives back a closed connection's lease (blocking I/O:
        it runs in the loop's default executor)."""
        self._max_messages = max_messages
        self._idle_timeout = idle_timeout
        self._max_lifetime = max_lifetime
        self.release = release
        self.acquire = acquire
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._idle: dict[PoolKey, list[tuple[Connection, asyncio.TimerHandle]]] = defaultdict(list)
        self._waiters: dict[str, list[asyncio.Future[Handover]]] = defaultdict(list)
        self._closing: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self, key: PoolKey) -> Connection | None:
        """A parked connection for `key` that still looks alive, or None."""
        self._check_loop()
        parked = self._idle.get(key)
        while parked:
            # Most recently parked first: it is the least likely to have been timed out by the
            # server, and the rest age out, so a burst's extra connections close by themselves.
            connection, expiry = parked.pop()
            expiry.cancel()
            if connection.usable and not self._too_old(connection):
                return connection
            self._retire(key, connection)
        return None

    def waiting(self, destination: str) -> int:
        """How many deliveries wait for a connection to `destination` to come free."""
        return len(self._waiters.get(destination, ()))

    def take_parked(self, destination: str) -> Handover | None:
        """A parked connection to any server of `destination`, or None."""
        self._check_loop()
        for key in [key for key, parked in self._idle.items() if parked]:
            if key.destination == destination:
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
        waiter: asyncio.Future[Handover] = asyncio.get_running_loop().create_future()
        self._waiters[destination].append(waiter)
        self._ensure_poller(destination)
        try:
            async with asyncio.timeout(wait):
                return await waiter
        except TimeoutError:
            # Handed over just as the wait ran out: keep it, or it would never be closed.
            if waiter.done() and not waiter.cancelled():
                return waiter.result()
            return None
        finally:
            waiters = self._waiters[destination]
            if waiter in waiters:
                waiters.remove(waiter)

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
        if self._hand(key.destination, Handover(key, connection, None)):
            return True  # straight to a waiting delivery
        expiry = loop.call_later(self._idle_timeout, self._expire, key, connection)
        self._idle[key].append((connection, expiry))
        return True

    def attach(self, slot: Slot, connection: Connection) -> None:
        """`connection` is being opened for the delivery holding `slot`: it takes the lease."""
        connection.lease = slot.empty()

    def detach(self, slot: Slot, connection: Connection) -> None:
        """Close a connection its session gives up; its lease goes to `slot` for the connection
        that replaces it (or back to Redis, when the slot already holds one)."""
        connection.close()
        lease, connection.lease = connection.lease, None
        if not slot.held:
            slot.hold(lease)
        elif lease is not None:
            self._release_later(slot.destination, lease)

    async def fill(self, slot: Slot) -> bool:
        """Make `slot` able to open a connection: a lease from the cap, else the lease of an idle
        parked connection to the same destination, closed first. False: the cap is full and
        nothing here is idle."""
        self._check_loop()
        if slot.held:
            return True
        if self.acquire is None:
            slot.hold(None)
            return True
        loop = asyncio.get_running_loop()
        granted = await loop.run_in_executor(None, self.acquire, slot.destination)
        if isinstance(granted, Granted):
            slot.hold(granted.lease)
            return True
        for key, parked in self._idle.items():
            if key.destination == slot.destination and parked:
                # The least recently used one: the next delivery would take the newest.
                connection, expiry = parked.pop(0)
                expiry.cancel()
                if not parked:
                    del self._idle[key]
                # Closed before its lease moves: the server never sees the new one beside it.
                if connection.usable:
                    await connection.quit()
                connection.close()
                lease, connection.lease = connection.lease, None
                slot.hold(lease)
                return True
        return False

    async def free(self, slot: Slot) -> None:
        """Give back to Redis the lease `slot` holds: its delivery ends, or it uses a parked
        connection (which has a lease of its own) instead of opening one."""
        lease = slot.empty()
        if lease is not None:
            await self._release(slot.destination, lease)

    def idle(self, key: PoolKey | None = None) -> int:
        """How many connections are parked (for `key`, or in all)."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(parked) for parked in self._idle.values())

    async def close(self) -> None:
        """QUIT every parked connection (worker shutdown); waits for the QUITs under way."""
        for poller in list(self._pollers.values()):
            poller.cancel()
        for key, parked in self._idle.items():
            for connection, expiry in parked:
                expiry.cancel()
                self._retire(key, connection)
        self._idle.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _expire(self, key: PoolKey, connection: Connection) -> None:
        parked = self._idle.get(key, [])
        for index, (candidate, _) in enumerate(parked):
            if candidate is connection:
                del parked[index]
                break
        if not parked:
            self._idle.pop(key, None)
        self._retire(key, connection)

    def _retire(self, key: PoolKey, connection: Connection) -> None:
        """QUIT (in the background) and close a connection leaving the pool; its lease goes
        back once it is closed."""
        if connection.usable:
            self._track(asyncio.get_running_loop().create_task(self._quit(key, connection)))
        else:
            connection.close()
            self._give_back(key, connection)

    async def _quit(self, key: PoolKey, connection: Connection) -> None:
        await connection.quit()
        lease, connection.lease = connection.lease, None
        if lease is not None:
            await self._release(key.destination, lease)  # in this task: `close` waits for it

    async def _release(self, destination: str, lease: str) -> None:
        if self.release is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.release, destination, lease)

    def _release_later(self, destination: str, lease: str) -> None:
        """Release a lease no open connection holds any more, to Redis: every worker's waiting
        deliveries compete for it there (a local hand-over would starve other workers)."""
        if self.release is not None:
            loop = asyncio.get_running_loop()
            self._track(loop.run_in_executor(None, self.release, destination, lease))

    def _hand(self, destination: str, handover: Handover) -> bool:
        """Give `handover` to the longest-waiting delivery for `destination`, if any."""
        waiters = self._waiters.get(destination)
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(handover)
                return True
        return False

    def _ensure_poller(self, destination: str) -> None:
        if self.acquire is None or destination in self._pollers:
            return
        task = asyncio.get_running_loop().create_task(self._poll(destination))
        self._pollers[destination] = task
        task.add_done_callback(lambda _: self._pollers.pop(destination, None))

    async def _poll(self, destination: str) -> None:
        """While deliveries wait for `destination`, ask the cap for a new connection's lease
        (one asker per destination and worker, however many wait) and hand it to the first."""
        assert self.acquire is not None
        loop = asyncio.get_running_loop()
        while self.waiting(destination):
            granted = await loop.run_in_executor(None, self.acquire, destination)
            if isinstance(granted, Throttled):
                await asyncio.sleep(min(max(granted.retry_after, _POLL_MIN), _POLL_MAX))
                continue
            if not self._hand(destination, Handover(None, None, granted.lease)):
                if granted.lease is not None and self.release is not None:
                    await loop.run_in_executor(None, self.release, destination, granted.lease)
                return

    def _give_back(self, key: PoolKey, connection: Connection) -> None:
        lease, connection.lease = connection.lease, None
        if lease is not None:
            self._release_later(key.destination, lease)

    def _track(self, work: asyncio.Future[None]) -> None:
        self._closing.add(work)
        work.add_done_callback(self._closing.discard)

    def _too_old(self, connection: Connection) -> bool:
        return asyncio.get_running_loop().time() - connection.opened >= self._max_lifetime

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        """The pool's loop; connections of a loop that is gone are dropped, never reused."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            for parked in self._idle.values():
                for connection, expiry in parked:
                    expiry.cancel()
                    with contextlib.suppress(RuntimeError):  # that loop may be closed
                        connection.close()
            self._idle.clear()
            self._waiters.clear()
            self._loop = loop
        return loop
