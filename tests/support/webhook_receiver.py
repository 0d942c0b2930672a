"""A real HTTP webhook receiver on loopback for tests: answers each POST as its script says and
records every request (headers and body) it answered.

`WebhookReceiver(host, port)`: `answers` is a list of statuses used in order, then 200 for ever;
`hold` (a threading.Event) makes every request that comes before it is set wait until then and
fail (503, not recorded), as an endpoint that never answers; `start()` binds (so a port can be
reserved and the server started later: "down").
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.lifecycle import StartStop


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)["events"]
        return events


@dataclass
class WebhookReceiver(StartStop):
    host: str
    port: int
    answers: list[int] = field(default_factory=list)
    hold: threading.Event | None = None
    received: list[Received] = field(default_factory=list)
    requests: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("content-length", "0")), 10_000_000)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests += 1
                    status = receiver.answers.pop(0) if receiver.answers else 200
                if receiver.hold is not None and not receiver.hold.is_set():
                    # Held: the client may be gone by the release; this one never counts.
                    receiver.hold.wait(30)
                    status = 503
                if status == 200:
                    with receiver._lock:
                        receiver.received.append(Received(dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [event for request in self.received for event in request.events]
