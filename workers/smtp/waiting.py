"""Deliveries waiting for a connection to their destination when the connection cap is full.

A waiting delivery gets the first of this worker's connections to its destination to come free
(`hand`), or the lease of a new one: while any wait, one poller per destination asks the cap
again and again, however many wait, and hands what it gets to the longest-waiting delivery.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from workers.model.throttling import Throttled
from workers.smtp.slot import Handover, Leases

_POLL_MIN = 0.05  # seconds between a waiting worker's asks for a connection lease
_POLL_MAX = 0.25


class Waiters:
    """The deliveries waiting per destination, oldest first, and their pollers of the cap."""

    def __init__(self, leases: Leases) -> None:
        self._leases = leases
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[Handover]]] = defaultdict(list)

    def waiting(self, destination: str) -> int:
        """How many deliveries wait for a connection to `destination` to come free."""
        return len(self._waiters.get(destination, ()))

    async def wait(self, destination: str, wait: float) -> Handover | None:
        """What comes free for `destination` within `wait` seconds, or None."""
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

    def hand(self, destination: str, handover: Handover) -> bool:
        """Give `handover` to the longest-waiting delivery for `destination`, if any."""
        waiters = self._waiters.get(destination)
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(handover)
                return True
        return False

    def stop(self) -> None:
        """Stop asking the cap (worker shutdown)."""
        for poller in list(self._pollers.values()):
            poller.cancel()

    def forget(self) -> None:
        """Forget the waiters of an event loop that is gone."""
        self._waiters.clear()

    def _ensure_poller(self, destination: str) -> None:
        if self._leases.acquire is None or destination in self._pollers:
            return
        task = asyncio.get_running_loop().create_task(self._poll(destination))
        self._pollers[destination] = task
        task.add_done_callback(lambda _: self._pollers.pop(destination, None))

    async def _poll(self, destination: str) -> None:
        """While deliveries wait for `destination`, ask the cap for a new connection's lease
        and hand it to the first."""
        while self.waiting(destination):
            granted = await self._leases.ask(destination)
            assert granted is not None  # a poller only runs with a cap
            if isinstance(granted, Throttled):
                await asyncio.sleep(min(max(granted.retry_after, _POLL_MIN), _POLL_MAX))
                continue
            if not self.hand(destination, Handover(None, None, granted.lease)):
                if granted.lease is not None:
                    await self._leases.give(destination, granted.lease)
                return
