"""The harness's side of the benchmark sink: start scripts/benchlib/smtp_sink.py, read its events.

`SinkProcess(host, delay)` runs the sink in its own process (so its CPU is its own, reported
apart from Mailroom's), waits for `READY <port>`, and a reader thread turns its event stream
into `accepted` (Mailroom message id → unix time of the 250 after DATA; the first one when a
message came twice), `duplicates` and `connections` (connection id → unix time it opened).
Mailroom writes `Message-ID: <{message_id}@{sender domain}>`, so the id is its local part.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from tests.support.lifecycle import StartStop

SINK_SCRIPT = Path(__file__).resolve().with_name("smtp_sink.py")
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


@dataclass
class SinkEvents:
    """What the sink reported so far; read under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: dict[str, float] = field(default_factory=dict)
    message_conn: dict[str, int] = field(default_factory=dict)
    connections: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    last_at: float = 0.0


class SinkProcess(StartStop):
    """One sink process on `host` (a 127/8 address) and a port of its choosing."""

    def __init__(self, host: str, delay: float, log: Path) -> None:
        self.host = host
        self.delay = delay
        self.port = 0
        self.events = SinkEvents()
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "the sink is not running"
        return self._process.pid

    def start(self) -> Self:
        """Start the sink and return once it listens.

        :raises RuntimeError: it exited or did not say READY within 10 s.
        """
        command = [sys.executable, str(SINK_SCRIPT), "--host", self.host]
        command += ["--delay", str(self.delay)]
        with self._log.open("wb") as errors:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
            )
        stdout = self._process.stdout
        assert stdout is not None
        ready: list[int] = []
        got_ready = threading.Event()
        self._reader = threading.Thread(
            target=self._read, args=(stdout, ready, got_ready), name="sink-reader", daemon=True
        )
        self._reader.start()
        if not got_ready.wait(_START_TIMEOUT) or not ready:
            self.stop()
            raise RuntimeError(f"the SMTP sink did not start: {self._log.read_text()[-2000:]}")
        self.port = ready[0]
        return self

    def _read(self, stdout: IO[bytes], ready: list[int], got_ready: threading.Event) -> None:
        events = self.events
        for raw in stdout:
            parts = raw.decode("ascii", "replace").split()
            if not parts:
                continue
            kind = parts[0]
            if kind == "M" and len(parts) == 4:
                conn, at = int(parts[1]), float(parts[2])
                message_id = parts[3].partition("@")[0]
                with events.lock:
                    if message_id in events.accepted:
                        events.duplicates += 1
                    else:
                        events.accepted[message_id] = at
                        events.message_conn[message_id] = conn
                    events.last_at = max(events.last_at, at)
            elif kind == "C" and len(parts) == 3:
                with events.lock:
                    events.connections[int(parts[1])] = float(parts[2])
            elif kind == "READY" and len(parts) == 2:
                ready.append(int(parts[1]))
                got_ready.set()
        got_ready.set()  # the sink exited: stop waiting for READY

    def count(self, ids: dict[str, float]) -> int:
        """How many of `ids` the sink accepted."""
        with self.events.lock:
            accepted = self.events.accepted
            return sum(1 for message_id in ids if message_id in accepted)

    def wait_for(self, ids: dict[str, float], limit: float, every: float = 0.05) -> bool:
        """Wait until the sink accepted every id of `ids`; False after `limit` seconds."""
        deadline = time.monotonic() + limit
        while self.count(ids) < len(ids):
            if time.monotonic() >= deadline or not self.running():
                return False
            time.sleep(every)
        return True

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM the sink (it flushes its events), wait, read the rest; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout=_STOP_TIMEOUT)
