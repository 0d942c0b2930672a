"""A local MTA-STS policy host for the MTA-STS tests: real HTTPS on 127.0.0.61:443 (the port
RFC 8461 fixes; tests run as root), with a trustme certificate the client trusts through the
extra CA bundle, serving `/.well-known/mta-sts.txt` as the test says.

`serve(body, status=..., content_type=..., headers=...)` sets the next answers (a redirect is a
status 301 with a `Location` header); `requests` lists every (method, path, Host) received, so a
test can tell a fetch happened, or that a redirect was not followed.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.lifecycle import StartStop

POLICY_ADDRESS = "127.0.0.61"  # used by no other test server
HTTPS_PORT = 443


@dataclass(frozen=True)
class PolicyRequest:
    method: str
    path: str
    host: str


@dataclass
class _Answer:
    status: int = 404
    body: bytes = b""
    content_type: str = "text/plain"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class PolicyServer(StartStop):
    """The HTTPS server; `context` is its server-side TLS (certificate and key)."""

    context: ssl.SSLContext
    host: str = POLICY_ADDRESS
    port: int = HTTPS_PORT
    _answer: _Answer = field(default_factory=_Answer)
    _requests: list[PolicyRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def serve(
        self,
        body: str | bytes,
        *,
        status: int = 200,
        content_type: str = "text/plain",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._answer = _Answer(status, data, content_type, headers)

    @property
    def requests(self) -> list[PolicyRequest]:
        with self._lock:
            return list(self._requests)

    def start(self) -> PolicyServer:
        server = ThreadingHTTPServer((self.host, self.port), _handler(self))
        server.daemon_threads = True
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def _handle(self, method: str, path: str, host: str) -> _Answer:
        with self._lock:
            self._requests.append(PolicyRequest(method, path, host))
            return self._answer


def _handler(policy_server: PolicyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5

        def do_GET(self) -> None:
            answer = policy_server._handle("GET", self.path, self.headers.get("Host", ""))
            self.send_response(answer.status)
            if answer.content_type:
                self.send_header("Content-Type", answer.content_type)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are recorded, not printed

        def handle(self) -> None:
            # A client that refused our certificate hangs up mid-handshake.
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                super().handle()

    return Handler
