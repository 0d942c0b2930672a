"""The first hour, as the README tells it: `scripts/run` in a fresh copy of this checkout, then
`mailroom send` and `mailroom status` at its root with no export, and the message caught
locally in var/catcher.

`scripts/run` runs for real (its own setup of a run-only .venv from uv's cache, offline; Redis,
catcher, worker and Flower) in a copy in a temporary directory, on free ports, so it never
meets a developer's own run, port 6379 or their `.env`. It is stopped by its PID (the session
this test created for it) and every process it started must be gone afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.smtp_sink import MakeSink

REPO = Path(__file__).resolve().parents[1]
_READY_TIMEOUT = 180.0  # a cold uv sync on a busy machine included
_STOP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this checkout's files (tracked and new, not ignored ones: no .venv, var, .env),
    with the pinned uv of .tools linked in (scripts/setup would otherwise download it)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    )
    copy = tmp_path_factory.mktemp("fresh") / "mailroom"
    for name in listed.stdout.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    tools = REPO / ".tools"
    if not (tools / "uv" / "bin" / "uv").exists():
        pytest.fail(f"{tools}/uv is missing: scripts/setup installs it")
    (copy / ".tools").symlink_to(tools)
    return copy


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without MAILROOM_* (a developer's own), offline for uv."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MAILROOM_")}
    env.update({"UV_OFFLINE": "1", **extra})
    return env


@dataclass
class Run:
    """A running `scripts/run`: its process and everything it printed so far."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            assert self.process.poll() is None, "\n".join(self.lines)
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))

    def started(self) -> dict[str, int]:
        found = (re.match(r"run: started (\w+) \(pid (\d+)\)", line) for line in self.lines)
        return {match[1]: int(match[2]) for match in found if match}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@contextmanager
def scripts_run(checkout: Path, env: dict[str, str]) -> Iterator[Run]:
    process = subprocess.Popen(
        ["scripts/run"],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own session and process group: ours to signal
    )
    run = Run(process)
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            run.lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        yield run
    finally:
        started = run.started()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # scripts/run stops its children in order
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=_STOP_TIMEOUT)
        reader.join(timeout=_STOP_TIMEOUT)
        stdout.close()
        left = [name for name, pid in started.items() if alive(pid)]
        for name in left:  # only what this run started, by PID
            os.kill(started[name], signal.SIGKILL)
        assert not left, f"scripts/run left {left} running"


def mailroom(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`.venv/bin/mailroom ARGS` at the checkout's root, with no MAILROOM_* exported but `env`."""
    return subprocess.run(
        [".venv/bin/mailroom", *args],
        cwd=checkout,
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_delivered(
    checkout: Path, message_id: str, timeout: float, **env: str
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        shown = mailroom(checkout, "status", message_id, "--json", **env)
        assert shown.returncode == 0, shown.stderr
        view = json.loads(shown.stdout)
        if view["state"] == "delivered" or time.monotonic() > deadline:
            return dict(view)
        time.sleep(0.2)


def run_ports() -> dict[str, str]:
    return {
        "MAILROOM_RUN_REDIS_PORT": str(free_port()),
        "MAILROOM_RUN_CATCHER_PORT": str(free_port()),
        "MAILROOM_RUN_CATCHER_WEB_PORT": str(free_port()),
        "MAILROOM_FLOWER_LISTEN": f"127.0.0.1:{free_port()}",
    }


@pytest.mark.slow  # starts a whole deployment
def test_the_readme_first_notification_is_caught_locally(checkout: Path) -> None:
    ports = run_ports()
    with scripts_run(checkout, clean_environment(**ports)) as run:
        run.wait_for_line(r"^ready: ", _READY_TIMEOUT)
        run.wait_for_line(r"^Press Ctrl-C to stop", 10)

        sent = mailroom(
            checkout, "send", "--from", "app@example.com", "--to", "you@example.org",
            "--subject", "Hello", "--text", "Hi",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        message_id = sent.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{32}", message_id)
        started = time.monotonic()
        view = wait_delivered(checkout, message_id, timeout=30)
        took = time.monotonic() - started
        assert view["state"] == "delivered", view
        caught = run.wait_for_line(r" from=<app@example.com> to=you@example.org ", 10)
        lines = list(run.lines)

    print(f"delivered and shown by `mailroom status` {took:.1f} s after `mailroom send` returned")
    # Its first line says where mail goes; nothing is installed for tests or linting.
    assert lines[0] == (
        "run: mail is caught in var/catcher; set MAILROOM_DELIVERY=mx or relay to send for real"
    )
    for tool in ("pytest", "ruff", "mypy"):
        assert not (checkout / ".venv" / "bin" / tool).exists(), tool
    # `mailroom` found the Redis of scripts/run through the .env it wrote.
    env_file = (checkout / ".env").read_text()
    assert f"MAILROOM_REDIS_URL=redis://127.0.0.1:{ports['MAILROOM_RUN_REDIS_PORT']}/0" in env_file
    # The next-steps block ends what scripts/run printed; then only the catcher's line.
    after = lines[lines.index("Press Ctrl-C to stop everything started here.") + 1 :]
    assert [line for line in after if line.strip()][:1] == [caught]
    assert 'subject="Hello"' in caught
    # The message is a Maildir file in var/catcher, as sent.
    [stored] = list((checkout / "var" / "catcher" / "new").iterdir())
    assert caught.endswith(f"file=new/{stored.name}")
    content = stored.read_text()
    assert "\nSubject: Hello\n" in content
    assert "\nTo: you@example.org\n" in content
    assert content.rstrip().endswith("Hi")


@pytest.mark.slow  # starts a whole deployment
def test_with_a_delivery_setting_scripts_run_delivers_for_real(
    checkout: Path, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.2")
    routes = json.dumps({"*": f"smtp://127.0.0.2:{sink.port}?tls=none"})
    ports = run_ports()
    redis_url = f"redis://127.0.0.1:{ports['MAILROOM_RUN_REDIS_PORT']}/0"
    # A .env of the developer's own is never overwritten; the instructions say what to export.
    own = "# my settings\nMAILROOM_LOG_LEVEL=info\n"
    (checkout / ".env").write_text(own)
    with scripts_run(checkout, clean_environment(**ports, MAILROOM_ROUTES=routes)) as run:
        run.wait_for_line(r"^ready: ", _READY_TIMEOUT)
        sent = mailroom(
            checkout, "send", "--from", "app@example.com", "--to", "real@example.org",
            "--subject", "For real", "--text", "Hi", MAILROOM_REDIS_URL=redis_url,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        view = wait_delivered(
            checkout, sent.stdout.strip(), timeout=30, MAILROOM_REDIS_URL=redis_url
        )
        lines = list(run.lines)

    assert view["state"] == "delivered", view
    assert lines[0] == "run: delivering for real: MAILROOM_ROUTES is set"
    assert "catcher" not in run.started()
    assert (checkout / ".env").read_text() == own
    assert f"    export MAILROOM_REDIS_URL='{redis_url}'" in lines
    [received] = sink.messages
    assert received.rcpt_tos == ("real@example.org",)
