"""A cheap SMTP sink for benchmarks: a raw asyncio Protocol in its own process, stdlib only.

    python scripts/benchlib/smtp_sink.py --host 127.0.0.2 [--port 0] [--delay 0.05]

aiosmtpd costs far more CPU per message than the client under test; this server does the least
RFC 5321 needs so it does not steal the CPU the benchmark measures. EHLO advertises PIPELINING,
8BITMIME and SIZE (no STARTTLS, no AUTH); HELO, MAIL, RCPT, DATA (dot-terminated, across any
split of reads), RSET, NOOP and QUIT work; everything else gets 502. Every address is accepted.
With `--delay S`, the greeting and every reply is sent S seconds after its command arrived, as
a server across the internet answers (one timer per connection, via `loop.call_at`: the server
never sleeps, and replies keep the order of their commands).

Output, on stdout, one line per event, flushed every 0.1 s (the harness reads it as a stream):
    READY <port>                       once listening
    C <conn> <unix time>               a connection was accepted
    M <conn> <unix time> <message-id>  the 250 after DATA was sent (the time it was written);
                                       the Message-ID header's value without <>, "-" if none
Times are `time.time()` (CLOCK_REALTIME), the clock the producer stamps its enqueues with.
SIGTERM or SIGINT: flush and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import re
import signal
import socket
import sys
import time

MAX_SIZE = 52_428_800
MAX_LINE = 4096  # RFC 5321 §4.5.3.1.4 allows 512 octets for a command line; be lenient
_CRLF = b"\r\n"
_END = b"\r\n.\r\n"
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*<?([^>\r\n]*)>?", re.IGNORECASE | re.MULTILINE)
_FLUSH_EVERY = 0.1

_EHLO = (
    "250-{host}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE " + str(MAX_SIZE) + "\r\n250 HELP\r\n"
)
_OK_MAIL = b"250 2.1.0 Ok\r\n"
_OK_RCPT = b"250 2.1.5 Ok\r\n"
_OK = b"250 2.0.0 Ok\r\n"
_GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
_BYE = b"221 2.0.0 Bye\r\n"
_NOT_RECOGNIZED = b"502 5.5.2 Command not recognized\r\n"
_BAD_SEQUENCE = b"503 5.5.1 Bad sequence of commands\r\n"
_TOO_LONG = b"500 5.5.6 Line too long\r\n"


class Journal:
    """Events, buffered and written to stdout in batches (a write per message would cost more)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._ids = itertools.count()

    def connection(self) -> int:
        conn = next(self._ids)
        self._lines.append(f"C {conn} {time.time():.6f}\n")
        return conn

    def message(self, conn: int, message_id: str, at: float) -> None:
        self._lines.append(f"M {conn} {at:.6f} {message_id}\n")

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            sys.stdout.write("".join(lines))
            sys.stdout.flush()


class SinkSession(asyncio.Protocol):
    """One SMTP connection."""

    def __init__(self, journal: Journal, hostname: str, delay: float) -> None:
        self._journal = journal
        self._hostname = hostname
        self._delay = delay
        self._transport: asyncio.Transport | None = None
        self._conn = -1
        self._buffer = bytearray()
        self._data: bytearray | None = None  # the message while in DATA, after a leading CRLF
        self._scanned = 0
        self._greeted = False
        self._sender = False
        self._recipients = 0
        # Delayed replies: (due, bytes, is the 250 after DATA, message id, close after).
        self._pending: collections.deque[tuple[float, bytes, str | None, bool]] = (
            collections.deque()
        )
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._out: list[tuple[bytes, str | None, bool]] | None = None  # replies being grouped

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # Replies must not wait for the client's delayed ACK (Nagle), as a real MTA's don't.
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = self._journal.connection()
        self._reply(f"220 {self._hostname} ESMTP bench sink\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        # The replies to a pipelined group go out as one write, as RFC 2920 §3.2 asks of a
        # server and Postfix's smtpd does (it flushes only when no more input is pending).
        self._out = []
        try:
            self._received(data)
        finally:
            out, self._out = self._out, None
            if out:
                self._flush(out)

    def _received(self, data: bytes) -> None:
        if self._data is not None:
            self._data += data
            self._scan_data()
        else:
            self._buffer += data
        while self._data is None and not self._closing:
            end = self._buffer.find(_CRLF)
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    self._buffer.clear()
                    self._reply(_TOO_LONG)
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._command(line)

    # SMTP

    def _command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            self._greeted = True
            self._reset()
            if verb == b"EHLO":
                self._reply(_EHLO.format(host=self._hostname).encode())
            else:
                self._reply(f"250 {self._hostname}\r\n".encode())
        elif verb == b"MAIL":
            if not self._greeted or self._sender:
                self._reply(_BAD_SEQUENCE)
            else:
                self._sender = True
                self._reply(_OK_MAIL)
        elif verb == b"RCPT":
            if not self._sender:
                self._reply(_BAD_SEQUENCE)
            else:
                self._recipients += 1
                self._reply(_OK_RCPT)
        elif verb == b"DATA" and len(line) == 4:
            if not self._recipients:
                self._reply(_BAD_SEQUENCE)
            else:
                self._reply(_GO_AHEAD)
                # A leading CRLF lets one search find the terminator even for an empty body.
                self._data = bytearray(_CRLF) + self._buffer
                self._buffer = bytearray()
                self._scanned = 0
                self._scan_data()
        elif verb == b"RSET":
            self._reset()
            self._reply(_OK)
        elif verb == b"NOOP":
            self._reply(_OK)
        elif verb == b"QUIT":
            self._reply(_BYE, close=True)
        else:
            self._reply(_NOT_RECOGNIZED)

    def _scan_data(self) -> None:
        data = self._data
        assert data is not None
        end = data.find(_END, max(0, self._scanned - len(_END) + 1))
        if end < 0:
            self._scanned = len(data)
            return
        headers_end = data.find(b"\r\n\r\n", 0, end + 2)
        found = _MESSAGE_ID.search(data, 2, headers_end if headers_end >= 0 else end)
        message_id = found.group(1).decode("ascii", "replace").strip() if found else "-"
        # Whatever followed the dot (a pipelined next command) is a command again.
        self._buffer = bytearray(data[end + len(_END) :])
        self._data = None
        self._reset()
        self._reply(b"250 2.0.0 Ok: queued\r\n", message_id=message_id or "-")

    def _reset(self) -> None:
        self._sender = False
        self._recipients = 0

    # Replies, in command order, each `delay` after its command

    def _reply(self, reply: bytes, message_id: str | None = None, close: bool = False) -> None:
        if close:
            self._closing = True
        if self._delay <= 0:
            if self._out is not None:
                self._out.append((reply, message_id, close))
            else:
                self._flush([(reply, message_id, close)])
            return
        loop = asyncio.get_running_loop()
        self._pending.append((loop.time() + self._delay, reply, message_id, close))
        if self._timer is None:
            self._timer = loop.call_at(self._pending[0][0], self._due)

    def _due(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = []
        while self._pending and self._pending[0][0] <= now:
            _, reply, message_id, close = self._pending.popleft()
            due.append((reply, message_id, close))
        self._flush(due)
        if self._pending:
            self._timer = loop.call_at(self._pending[0][0], self._due)

    def _flush(self, replies: list[tuple[bytes, str | None, bool]]) -> None:
        """Write `replies` at once; then journal the messages they accepted, and close if asked."""
        transport = self._transport
        if transport is None:
            return
        transport.write(b"".join(reply for reply, _, _ in replies))
        at = time.time()
        for _, message_id, close in replies:
            if message_id is not None:
                self._journal.message(self._conn, message_id, at)
            if close:
                transport.close()
                return


async def serve(host: str, port: int, delay: float) -> None:
    """Listen until SIGTERM/SIGINT; prints READY <port> first."""
    loop = asyncio.get_running_loop()
    journal = Journal()
    hostname = f"sink-{host}"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    server = await loop.create_server(
        lambda: SinkSession(journal, hostname, delay), sock=listener, backlog=4096
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"READY {listener.getsockname()[1]}", flush=True)

    async def flusher() -> None:
        while True:
            journal.flush()
            await asyncio.sleep(_FLUSH_EVERY)

    flushing = asyncio.create_task(flusher())
    await stop.wait()
    flushing.cancel()
    server.close()
    journal.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.2", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    args = parser.parse_args()
    if not args.host.startswith("127."):
        parser.error("--host must be a 127.0.0.0/8 address")
    asyncio.run(serve(args.host, args.port, args.delay))


if __name__ == "__main__":
    main()
