"""The wire of an open SMTP connection: commands written in groups, replies read in order.

aiosmtplib opens a session (connect, greeting, EHLO, STARTTLS, AUTH); then `Wire.take_over`
moves the connection's transport to a `Wire`, which carries every transaction after that: RSET,
MAIL FROM, RCPT TO, DATA, the message and QUIT. With the server's PIPELINING (RFC 2920) a
transaction's commands up to DATA go out in one write, so a message costs two round trips
instead of five. aiosmtplib's protocol reads one reply per command written and drops bytes that
arrive while a parsed reply waits to be picked up, so it cannot carry a pipelined group.

A `Wire` also notices what a parked connection hears: any bytes while no reply is expected (a
server's "421 idle timeout" before it hangs up) make the connection unusable, so it is never
reused into a conversation out of step.

A reply stream that cannot be trusted is garbled: a line that is no reply (no code, a code
outside 200-599, too long) or more replies than commands asked for. From then on every read
says so (`NoReply(garbled=True)`), queued replies included: one surplus reply shifts every
later one onto the wrong command, a RCPT's 250 read as DATA's.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

from workers.model.reply import printable
from workers.smtp.framing import MAX_BUFFER, NotAReply, WireReply, excerpt, take_reply


@dataclass(frozen=True, slots=True)
class NoReply:
    """Why no reply came: the connection closed, it took too long, or (`garbled`) the server
    said something that is no reply, or a reply nobody asked for."""

    reason: str
    garbled: bool = False


class Wire(asyncio.Protocol):
    """An asyncio protocol that parses SMTP replies into a queue as they arrive."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._replies: deque[WireReply] = deque()
        self._expected = 0  # replies owed for commands written and not yet parsed
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # set while the transport is paused
        self._closed: str | None = None  # why the connection is no longer usable
        self._garbled = False  # the reply stream is out of step: no reply can be trusted
        self._flushed = time.perf_counter()  # when the last write left the transport's buffer
        self._loop = asyncio.get_running_loop()

    @classmethod
    def take_over(cls, transport: asyncio.Transport) -> Wire:
        """Move `transport` (plain TCP or TLS) from its current protocol to a new `Wire`."""
        wire = cls()
        wire._transport = transport
        transport.set_protocol(wire)
        if transport.is_closing():
            wire._closed = "connection lost"
        return wire

    @property
    def usable(self) -> bool:
        """Open, in step (no reply owed, nothing unasked for heard) and never timed out."""
        return self._closed is None and self._expected == 0 and not self._replies

    @property
    def quiet(self) -> bool:
        """Open and nothing heard beyond the replies read: no queued reply, no partial one."""
        return self.usable and not self._buffer

    @property
    def heard_more(self) -> bool:
        """Bytes beyond the replies read so far: a queued reply or part of one."""
        return bool(self._replies or self._buffer)

    @property
    def flushed(self) -> float:
        """When the last write stopped holding the transport back (`time.perf_counter()`): until
        then its end was still in our buffer, so a reply complete before then cannot answer it."""
        return self._flushed

    def send(self, data: bytes, replies: int) -> bool:
        """Write `data`, which asks for `replies` replies (0 for message content); False when
        the connection was already gone, so nothing was written."""
        transport = self._transport
        if transport is None or transport.is_closing():
            self._close("connection lost")
            return False
        self._expected += replies
        transport.write(data)
        if self._writable is None:
            self._flushed = time.perf_counter()
        return True

    async def drain(self, stall: float) -> bool:
        """Wait until the transport has room again (a large message fills its buffer).

        False, and the connection dropped, when the server took no byte for `stall` seconds
        (it stopped reading): the end of what was written never left.
        """
        transport = self._transport
        while self._writable is not None and self._closed is None and transport is not None:
            pending = transport.get_write_buffer_size()
            done, _ = await asyncio.wait([self._writable], timeout=stall)
            if not done and transport.get_write_buffer_size() >= pending:
                self.abort(f"the server took no data for {stall:g} s")
                return False
        return True

    async def read(self, timeout: float) -> WireReply | NoReply:
        """The next reply, or why none came within `timeout` seconds of waiting.

        A timeout leaves the conversation out of step, so the wire is closed then.
        """
        got = self._next()
        if got is not None:
            return got
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        got = self._next()
        if got is not None:
            return got
        self.abort("no reply in time")
        return NoReply("no reply in time")

    async def quit(self, timeout: float) -> WireReply | NoReply:
        """QUIT and wait briefly for the 221; the connection is closed either way."""
        self.send(b"QUIT\r\n", 1)
        answer = await self.read(timeout)
        self.abort("closed after QUIT")
        return answer

    def abort(self, reason: str) -> None:
        """Drop the connection at once (no QUIT): nothing more is owed to the server."""
        self._close(reason)
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ""
        self._close(f"connection lost{detail}")
        self._transport = None

    def eof_received(self) -> bool:
        self._close("the server closed the connection")
        return False  # close our side as well

    def data_received(self, data: bytes) -> None:
        if self._garbled:
            return  # the connection is being dropped; nothing more is worth parsing
        self._buffer += data
        if self._expected <= 0:
            # Nothing was asked: a server talking out of turn (typically "421 ... closing"
            # to a parked connection). Keep it, so the connection counts as unusable.
            self._closed = self._closed or "the server spoke out of turn"
        at = time.perf_counter()
        while not self._garbled:
            reply = take_reply(self._buffer, at)
            if reply is None:
                break
            if isinstance(reply, NotAReply):
                self._garble(reply.reason)
                break
            if self._expected <= 0:
                # A parked connection's "421 closing" as much as a stray "250 OK" mid-session.
                self._garble(f"a reply nobody asked for: {reply.code} {printable(reply.text)}")
                break
            self._expected -= 1
            self._replies.append(reply)
        if len(self._buffer) > MAX_BUFFER:
            self._garble(f"reply too long: {excerpt(self._buffer)}")
        if self._replies or self._closed is not None:
            self._wake()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            self._flushed = time.perf_counter()
            writable.set_result(None)

    # Plumbing

    def _next(self) -> WireReply | NoReply | None:
        """The next parsed reply, else why none will come, else None (wait for more bytes)."""
        if self._garbled:
            return NoReply(self._closed or "garbled", garbled=True)
        if self._replies:
            return self._replies.popleft()
        if self._closed is not None:
            return NoReply(self._closed)
        return None

    def _garble(self, reason: str) -> None:
        """The stream is out of step: say why to every read from now on, and hang up."""
        self._garbled = True
        self._closed = reason  # the more telling reason than "spoke out of turn"
        self._replies.clear()
        del self._buffer[:]
        self.abort(reason)

    def _close(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        self._wake()
        self.resume_writing()

    def _wake(self) -> None:
        if self._waiter is not None:
            _wake(self._waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
