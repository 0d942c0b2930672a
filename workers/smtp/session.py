"""One SMTP conversation with one server address: steps 1 and 6 of the session, around 3 to 5.

open (`workers.smtp.opening`) → one mail transaction (`workers.smtp.transaction`: MAIL FROM,
RCPT TO per recipient, DATA) → QUIT, or the connection parked for the next message. Every
command's reply is recorded with its step, enhanced code and duration (`workers.smtp.record`).
The session never raises for anything the network or the server does (`workers.smtp.channel`
turns each library exception into a `Reply`). QUIT never changes an outcome.

aiosmtplib opens the session; the transactions then run on the connection's `Wire`
(`workers.smtp.wire`), pipelined when the server offers PIPELINING (RFC 2920).

With a `ConnectionPool`, a session first takes a parked connection to the same server and sends
RSET (pipelined with the transaction); if RSET fails (the server closed it while it was parked),
nothing of this message has been sent, so the connection is dropped and a fresh one opened: no
duplicate is possible. After the transaction a healthy connection is parked again instead of QUIT.
The session never handles connection-cap leases itself: the pool moves them between the
connection and the delivery's `Slot` (`attach` on open, `detach` on a dropped connection).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from workers.model import reply as replies
from workers.model.reply import Reply, Step
from workers.model.report import StepRecord
from workers.smtp.channel import Channel
from workers.smtp.connection import Connection
from workers.smtp.opening import open_session
from workers.smtp.peer import Errand, Peer
from workers.smtp.record import Ledger
from workers.smtp.slot import Slot
from workers.smtp.transaction import Awaited, read_reply, transaction


@dataclass(frozen=True, slots=True)
class SessionResult:
    """What one conversation did: its steps and the final reply for each recipient."""

    host: str
    address: str
    steps: tuple[StepRecord, ...]
    replies: dict[str, Reply]
    greeted: bool  # the server said 2xx at connect: counts as a session (Postfix's session limit)
    tls: bool  # the message, if sent, went over TLS
    tls_failed: bool  # opportunistic TLS failed: this address may be retried without TLS


async def run_session(peer: Peer, errand: Errand) -> SessionResult:
    """Run one SMTP session with `peer` for `errand`, returning every recipient's final reply."""
    own = None
    slot = errand.slot
    if slot is None:
        slot = own = Slot(peer.destination, held=True)
    conversation = _Conversation(peer, errand, slot)
    try:
        async with asyncio.timeout_at(errand.deadline):
            await conversation.run()
    except TimeoutError:
        ledger = conversation.ledger
        ledger.abandon(replies.deadline_exceeded(peer.host, ledger.step))
    finally:
        conversation.close()
        if own is not None and conversation.pool is not None:
            await conversation.pool.free(own)  # what a dropped parked connection left in it
        await asyncio.sleep(0)  # one loop turn lets the aborted transport release its socket
    return conversation.result()


class _Conversation:
    """One session: its `Channel` to the server, the `Ledger` of what it recorded, and the
    delivery's `slot` (its right to open a connection)."""

    def __init__(self, peer: Peer, errand: Errand, slot: Slot) -> None:
        self.peer = peer
        self.errand = errand
        self.slot = slot
        self.pool = None if errand.probe else errand.pool  # a probe never reuses nor parks
        self.ledger = Ledger(peer.host, errand.recipients)
        self.channel = Channel(peer, self.ledger)

    def result(self) -> SessionResult:
        channel = self.channel
        return SessionResult(
            self.peer.host,
            self.peer.address,
            tuple(self.ledger.steps),
            dict(self.ledger.replies),
            channel.greeted,
            channel.tls_active,
            channel.tls_failed,
        )

    def close(self) -> None:
        """Close the connection unless it was parked in the pool; its lease goes to the slot."""
        connection, self.channel.connection = self.channel.connection, None
        if connection is None:
            return
        if self.pool is not None:
            self.pool.detach(self.slot, connection)
        else:
            connection.close()

    async def run(self) -> None:
        pool, key, ledger = self.pool, self.peer.key, self.ledger
        parked = self.errand.connection
        if parked is None and pool is not None:
            parked = pool.take(key)
        if parked is not None and pool is not None:
            await pool.free(self.slot)  # the parked connection holds a lease of its own
        if parked is None or not await self.resume(parked):
            if not await open_session(self.channel, pool, self.slot):
                return
            assert self.channel.connection is not None
            await self.transact(self.channel.connection, reset=False)
        connection = self.channel.connection
        # A server that asked to slow down gets its session ended, not kept open.
        reusable = not ledger.lost and not ledger.throttled
        if reusable and pool is not None and connection is not None and pool.give(key, connection):
            # Parked, with its lease: the next delivery to this server RSETs it.
            self.channel.connection = None
            return
        await self.quit()

    async def transact(self, connection: Connection, *, reset: bool) -> bool:
        return await transaction(
            self.ledger, connection, self.errand, self.peer.timeouts, reset=reset
        )

    async def resume(self, connection: Connection) -> bool:
        """Run the transaction on a parked connection, after RSET.

        False (and the connection dropped) when RSET fails: nothing of this message reached
        the server, so a fresh connection can be opened without any risk of a duplicate.
        """
        channel = self.channel
        channel.connection = connection
        channel.greeted = True
        channel.tls_active = connection.tls_active
        if await self.transact(connection, reset=True):
            return True
        self.close()  # its lease now covers the fresh connection that replaces it
        self.ledger.lost = self.ledger.throttled = False
        return False

    async def quit(self) -> None:
        """Step 6: QUIT, on the wire once the session is open, else through aiosmtplib."""
        connection = self.channel.connection
        assert connection is not None
        self.ledger.step = Step.QUIT
        if connection.wire is None:
            if connection.smtp.is_connected:
                await self.channel.call("QUIT", connection.smtp.quit())
            return
        if connection.wire.usable:
            started = time.perf_counter()
            connection.wire.send(b"QUIT\r\n", 1)
            awaited = Awaited("QUIT", started, self.peer.timeouts.command)
            await read_reply(self.ledger, connection.wire, awaited)
