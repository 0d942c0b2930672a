"""Connection-cap leases as the pool moves them: a delivery's `Slot`, what a waiting delivery is
handed (`Handover`), and `Leases`, which asks the cap for leases and gives them back.

A delivery holds a `Slot`: the lease of the one connection it may open, while it has none open.
Opening moves the slot's lease into the connection (`attach`); a connection the session drops
gives it back to the slot for its replacement (`detach`); whatever a slot still holds when its
delivery ends goes back to Redis (`free`). The cap's calls block (Redis): they run in the
event loop's default executor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from workers.model.throttling import Granted, Throttled
from workers.smtp.connection import Connection, PoolKey

Acquire = Callable[[str], Granted | Throttled]  # a new connection's lease for a destination
Release = Callable[[str, str], None]  # give back (destination, lease)


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


class Leases:
    """Asks the cap (`acquire`) for leases and gives them back (`release`); without a cap
    there is nothing to ask and nothing to give back. Tracks the give-backs under way."""

    def __init__(self, acquire: Acquire | None = None, release: Release | None = None) -> None:
        self.acquire = acquire
        self.release = release
        self._closing: set[asyncio.Future[None]] = set()

    async def ask(self, destination: str) -> Granted | Throttled | None:
        """A lease from the cap, a "not now", or None when there is no cap."""
        if self.acquire is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(None, self.acquire, destination)

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
            self.release_later(slot.destination, lease)

    async def free(self, slot: Slot) -> None:
        """Give back to Redis the lease `slot` holds: its delivery ends, or it uses a parked
        connection (which has a lease of its own) instead of opening one."""
        lease = slot.empty()
        if lease is not None:
            await self.give(slot.destination, lease)

    def give_back(self, key: PoolKey, connection: Connection) -> None:
        """Give back the lease of a `connection` that is closed."""
        lease, connection.lease = connection.lease, None
        if lease is not None:
            self.release_later(key.destination, lease)

    async def give(self, destination: str, lease: str) -> None:
        """Give `lease` back to the cap, waiting for it."""
        if self.release is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.release, destination, lease)

    def release_later(self, destination: str, lease: str) -> None:
        """Release a lease no open connection holds any more, to Redis: every worker's waiting
        deliveries compete for it there (a local hand-over would starve other workers)."""
        if self.release is not None:
            loop = asyncio.get_running_loop()
            self.track(loop.run_in_executor(None, self.release, destination, lease))

    def track(self, work: asyncio.Future[None]) -> None:
        """Keep `work` (a QUIT or a give-back) until it is done, for `settle`."""
        self._closing.add(work)
        work.add_done_callback(self._closing.discard)

    async def settle(self) -> None:
        """Wait for every QUIT and give-back under way."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
