"""Tiny TCP servers for what an SMTP server library will not do, on loopback, in threads.

- `GreetingServer(greeting="421 4.3.2 busy")`: sends that greeting, answers QUIT with 221 and
  anything else with 503 (RFC 5321 §3.1: after a 554 greeting the server waits for QUIT), then
  closes; `close_after_greeting=True` hangs up right after the greeting instead.
- `SilentServer()`: accepts connections and never sends a byte (greeting timeouts).
- `ScriptedServer(replies={"RCPT": "550 5.1.1 no"})`: an ESMTP server announcing PIPELINING
  that answers each verb from the script (250 by default), even where a real server would not
  (a 354 to DATA after every RCPT failed, stray lines, garbage); `out_of_turn` is sent, unasked,
  after each message; `stall_after_354` stops reading after DATA's 354.
- `refused_port(host)`: a context manager giving a port where nothing listens, so connecting is
  refused; the port stays bound (not listening) meanwhile, so nothing else can take it.
A STARTTLS whose handshake fails is a `Sink(broken_starttls=True)` (tests/support/smtp_sink.py):
it needs a working plain SMTP session on the retry, which aiosmtpd gives.

Each server binds port 0 on its address, records what each connection sent (`received`, lines
without CRLF), counts `connections`, and is a context manager; `stop()` closes every connection.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import BinaryIO, Protocol, Self, TypedDict, Unpack

import pytest

from tests.support.lifecycle import StartStop

_POLL_SECONDS = 0.05


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


@contextmanager
def refused_port(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Yield a port on `host` that refuses connections while the context lasts.

    A bound socket that never listens makes Linux answer a SYN with RST (ECONNREFUSED).
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, port))
        yield int(sock.getsockname()[1])


class RawServer(StartStop):
    """A threaded TCP server: one accept thread, one thread per connection running `serve`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._received: list[list[str]] = []

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        with self._lock:
            return len(self._received)

    @property
    def received(self) -> list[list[str]]:
        """Per connection, the lines the client sent (without CRLF), decoded leniently."""
        with self._lock:
            return [list(lines) for lines in self._received]

    def start(self) -> Self:
        """Bind a free port on `host` and start accepting. Returns self."""
        listener = socket.create_server((self.host, self.port), family=_family(self.host))
        listener.settimeout(_POLL_SECONDS)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._spawn(self._accept_loop, listener)
        return self

    def stop(self) -> None:
        """Stop accepting, shut every connection down and join the threads. Idempotent."""
        self._stopping.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def serve(self, conn: socket.socket, lines: list[str]) -> None:
        """Talk to one client; `lines` is where `readline` records what it sent."""
        raise NotImplementedError

    def readline(self, reader: BinaryIO, lines: list[str]) -> str | None:
        """One line from the client without CRLF, recorded; None at end of stream."""
        raw = reader.readline()
        if not raw:
            return None
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        with self._lock:
            lines.append(line)
        return line

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            lines: list[str] = []
            with self._lock:
                self._conns.append(conn)
                self._received.append(lines)
            self._spawn(self._run, conn, lines)

    def _run(self, conn: socket.socket, lines: list[str]) -> None:
        # OSError: the client hung up, or stop() shut the socket down.
        with conn, suppress(OSError):
            self.serve(conn, lines)


class GreetingServer(RawServer):
    """Greets every client with `greeting`, then waits for QUIT (or hangs up at once)."""

    def __init__(
        self,
        greeting: str = "421 4.3.2 busy",
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        close_after_greeting: bool = False,
    ) -> None:
        super().__init__(host, port)
        self.greeting = greeting
        self.close_after_greeting = close_after_greeting

    def serve(self, conn: socket.socket, lines: list[str]) -> None:
        conn.sendall(self.greeting.encode("utf-8") + b"\r\n")
        if self.close_after_greeting:
            return
        with conn.makefile("rb") as reader:
            while (line := self.readline(reader, lines)) is not None:
                if line.strip().upper() == "QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                conn.sendall(b"503 5.5.1 bad sequence of commands\r\n")


class SilentServer(RawServer):
    """Accepts connections and says nothing until the client hangs up or the server stops."""

    def serve(self, conn: socket.socket, lines: list[str]) -> None:
        with conn.makefile("rb") as reader:
            while self.readline(reader, lines) is not None:
                pass


Said = str | bytes  # one reply as it goes on the wire, CRLF added; bytes for what is no text


class Script(TypedDict, total=False):
    """Keyword options of `ScriptedServer`; see its docstring for what each one does."""

    replies: dict[str, Said | list[Said]] | None
    out_of_turn: str | None
    greeting: Said
    stall_after_354: bool
    hang_at: str | None


class ScriptedServer(RawServer):
    """Answers every command from `replies` (by verb; 250 when not named), DATA's content too.

    `replies` keys are verbs ("MAIL", "RCPT", "DATA", "EHLO", ...) and "." for the reply after
    the message; a list gives successive replies to that verb, its last one repeated. A reply
    may hold several lines ("354 go\r\n250 OK") or be bytes (garbage), or be empty: no answer
    at all (the server reads on). `hang_at` names the verb from which on the server answers
    nothing more (a hung server). `greeting` replaces the 220; `stall_after_354` stops reading
    after DATA's 354, as a server whose socket buffers fill up. `out_of_turn` goes out unasked
    after each message's reply, a moment later, and `spoke` is set once it has.
    """

    def __init__(self, host: str = "127.0.0.1", **script: Unpack[Script]) -> None:
        super().__init__(host)
        self.replies = dict(script.get("replies") or {})
        self.out_of_turn = script.get("out_of_turn")
        self.greeting: Said = script.get("greeting", "220 scripted.test ESMTP")
        self.stall_after_354 = script.get("stall_after_354", False)
        self.hang_at = script.get("hang_at")
        self.spoke = threading.Event()

    def serve(self, conn: socket.socket, lines: list[str]) -> None:
        said: dict[str, int] = {}  # how many replies each verb got on this connection
        hung = False
        _say(conn, self.greeting)
        with conn.makefile("rb") as reader:
            while (line := self.readline(reader, lines)) is not None:
                verb = line[:4].upper()
                hung = hung or verb == self.hang_at
                if hung:
                    continue
                if verb == "QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                default: Said = "250 ok"
                if verb == "EHLO":
                    default = "250-scripted.test\r\n250 PIPELINING"
                elif verb == "DATA":
                    default = "354 go ahead"
                reply = self._reply(verb, default, said)
                _say(conn, reply)
                if verb == "DATA" and _text(reply).startswith("354"):
                    if self.stall_after_354:
                        self._stopping.wait()
                        return
                    self._content(conn, reader, lines, said)

    def _reply(self, verb: str, default: Said, said: dict[str, int]) -> Said:
        script = self.replies.get(verb, default)
        count = said.get(verb, 0)
        said[verb] = count + 1
        if isinstance(script, list):
            return script[min(count, len(script) - 1)]
        return script

    def _content(
        self, conn: socket.socket, reader: BinaryIO, lines: list[str], said: dict[str, int]
    ) -> None:
        while (line := self.readline(reader, lines)) is not None:
            if line == ".":
                _say(conn, self._reply(".", "250 2.0.0 queued", said))
                if self.out_of_turn is not None:
                    # Later than the reply, so the client hears it while the connection is parked.
                    self._stopping.wait(0.05)
                    conn.sendall(self.out_of_turn.encode() + b"\r\n")
                    self.spoke.set()
                return


def _text(reply: Said) -> str:
    return reply if isinstance(reply, str) else reply.decode("latin-1")


def _say(conn: socket.socket, reply: Said) -> None:
    """Send `reply` and CRLF; nothing at all for an empty one (a server that does not answer)."""
    data = reply.encode() if isinstance(reply, str) else reply
    if data:
        conn.sendall(data + b"\r\n")


class MakeGreetingServer(Protocol):
    """Type of the `make_greeting_server` fixture (arguments of `GreetingServer`)."""

    def __call__(
        self,
        greeting: str = "421 4.3.2 busy",
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        close_after_greeting: bool = False,
    ) -> GreetingServer: ...


class MakeSilentServer(Protocol):
    """Type of the `make_silent_server` fixture."""

    def __call__(self, host: str = "127.0.0.1", port: int = 0) -> SilentServer: ...


class MakeRefusedPort(Protocol):
    """Type of the `make_refused_port` fixture."""

    def __call__(self, host: str = "127.0.0.1", port: int = 0) -> int: ...


@pytest.fixture
def make_greeting_server() -> Iterator[MakeGreetingServer]:
    """Start `GreetingServer`s for this test; each is stopped after it."""
    servers: list[GreetingServer] = []

    def make(
        greeting: str = "421 4.3.2 busy",
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        close_after_greeting: bool = False,
    ) -> GreetingServer:
        server = GreetingServer(
            greeting, host, port=port, close_after_greeting=close_after_greeting
        )
        servers.append(server.start())
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_silent_server() -> Iterator[MakeSilentServer]:
    """Start `SilentServer`s on the given address for this test; each is stopped after it."""
    servers: list[SilentServer] = []

    def make(host: str = "127.0.0.1", port: int = 0) -> SilentServer:
        server = SilentServer(host, port)
        servers.append(server.start())
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_refused_port() -> Iterator[MakeRefusedPort]:
    """Ports that refuse connections, on the given address, held until the test ends."""
    with ExitStack() as stack:

        def make(host: str = "127.0.0.1", port: int = 0) -> int:
            return stack.enter_context(refused_port(host, port))

        yield make
