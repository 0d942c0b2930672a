"""`mailroom worker` subprocesses for a benchmark: the real command, configured by MAILROOM_*.

Each worker is `.venv/bin/mailroom worker --shards S --concurrency C` (the console script of
this checkout, PYTHONPATH pointing at it), in its own process group and its own log file, with
the working directory a temporary one (no stray .env is read). `Workers.wait_ready` pings them
through Celery's remote control until every one answers; `stop` sends SIGTERM to each group
(Celery's warm shutdown), then SIGKILL after a limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from celery import Celery

from tests.support.lifecycle import StartStop

REPO = Path(__file__).resolve().parents[2]
_EXIT_TIMEOUT = 20.0


def mailroom_command() -> list[str]:
    """The `mailroom` console script beside this Python, else `python -m tasks.cli`."""
    script = Path(sys.executable).with_name("mailroom")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tasks.cli"]


def environment(values: Mapping[str, Any]) -> dict[str, str]:
    """A minimal environment: PATH, PYTHONPATH and MAILROOM_<NAME> for every setting given."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    env.update({f"MAILROOM_{name.upper()}": str(value) for name, value in values.items()})
    return env


@dataclass
class WorkerSpec:
    """One worker process to start: its shard list (None: all) and its task threads."""

    shards: str | None
    concurrency: int


class Workers(StartStop):
    """Several `mailroom worker` processes sharing one deployment's settings."""

    def __init__(
        self,
        values: Mapping[str, Any],
        specs: Sequence[WorkerSpec],
        workdir: Path,
        loglevel: str | None = None,
    ) -> None:
        self._values = dict(values)
        self._specs = list(specs)
        self._workdir = workdir
        self._loglevel = loglevel
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def start(self) -> Self:
        env = environment(self._values)
        for number, spec in enumerate(self._specs):
            command = [*mailroom_command(), "worker", "--concurrency", str(spec.concurrency)]
            if spec.shards is not None:
                command += ["--shards", spec.shards]
            if self._loglevel is not None:
                command += ["--loglevel", self._loglevel]
            log = self._workdir / f"worker{number}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    command,
                    cwd=self._workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.processes.append(process)
            self.logs.append(log)
        return self

    def wait_ready(self, app: Celery, limit: float = 60.0) -> None:
        """Return once every worker answers a remote-control ping.

        :raises RuntimeError: a worker exited, or not all answered within `limit` seconds.
        """
        wanted = {f"mailroom-{pid}@" for pid in self.pids}
        deadline = time.monotonic() + limit
        while True:
            self.check_alive()
            replies = app.control.ping(timeout=0.5) or []
            answered = {name.split("@")[0] + "@" for reply in replies for name in reply}
            if wanted <= answered:
                return
            if time.monotonic() >= deadline:
                missing = sorted(wanted - answered)
                raise RuntimeError(f"workers not ready after {limit:.0f} s: {missing}")

    def check_alive(self) -> None:
        """:raises RuntimeError: a worker has exited (the end of its log is in the message)."""
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker {process.pid} exited ({process.returncode}):\n{tail}")

    def stop(self) -> None:
        """SIGTERM every worker's process group, then SIGKILL those still there after 20 s."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _EXIT_TIMEOUT
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
