"""`mailroom passwd` and `mailroom submission` as operators run them: real subprocesses."""

from __future__ import annotations

import io
import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

from settings import SettingsError
from tasks.cli import main
from tasks.submission.accounts import Accounts
from tasks.submission.server import build_server
from tests.support.redis_server import RedisServer
from tests.support.tls_material import TlsMaterial
from tests.tasks.submission_support import (
    PASSWORD,
    SENDER,
    USER,
    account_lines,
    certificate,
    free_port,
    message,
    submission_settings,
)
from tests.tasks.test_cli import assert_usage_error, run_mailroom


class BadPasswd(NamedTuple):
    """`mailroom passwd` arguments and input, and the words its one-line error must hold."""

    args: tuple[str, ...]
    stdin: str
    words: tuple[str, ...]


class BadSetting(NamedTuple):
    """A setting made bad (None: unset; "{name}" filled in by the test), and the variable and
    problem the error must name."""

    field: str
    value: str | None
    variable: str
    problem: str


REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.22"


def passwd(*args: str, stdin: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", "passwd", *args],
        input=stdin,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.slow  # a CLI subprocess
def test_passwd_prints_a_line_that_verifies_and_never_the_password(tmp_path: Path) -> None:
    secret = "tr0ub4dor & 3 ünicode"
    done = passwd("billing-app", "--sender", "@example.test", stdin=secret + "\n", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    [line] = done.stdout.splitlines()
    assert secret not in done.stdout
    assert line.startswith("billing-app:scrypt$")
    assert line.endswith(":@example.test")
    accounts = Accounts.parse(line)
    account = accounts.verify(b"billing-app", secret.encode())
    assert account is not None
    assert account.senders.allows("anyone@example.test")
    assert accounts.verify(b"billing-app", b"tr0ub4dor") is None


@pytest.mark.parametrize(
    "case",
    [
        BadPasswd(("bad:name",), "pw\n", ("username",)),
        BadPasswd(("app",), "", ("no password",)),
        BadPasswd(("app",), "\n", ("no password",)),
        BadPasswd(("app", "--sender", "not an address@"), "pw\n", ("sender",)),
    ],
)
def test_passwd_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: BadPasswd,
) -> None:
    args, stdin, words = case
    monkeypatch.chdir(tmp_path)  # no .env of the outer world
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["passwd", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("mailroom: passwd: ")
    for word in words:
        assert word in line


def listener_env(tmp_path: Path, tls: TlsMaterial, redis_url: str, port: int) -> dict[str, str]:
    cert = certificate(tls, HOST)
    accounts = tmp_path / "accounts"
    accounts.write_text(account_lines())
    return {
        "MAILROOM_REDIS_URL": redis_url,
        "MAILROOM_SUBMISSION_LISTEN": f"{HOST}:{port}",
        "MAILROOM_SUBMISSION_CERT_FILE": str(cert.chain),
        "MAILROOM_SUBMISSION_KEY_FILE": str(cert.key),
        "MAILROOM_SUBMISSION_ACCOUNTS": str(accounts),
        "MAILROOM_HELO_NAME": "submission.mailroom.test",
    }


def wait_listening(process: subprocess.Popen[str], port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            with smtplib.SMTP(HOST, port, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("mailroom submission did not start listening")


@pytest.mark.slow  # a CLI subprocess
def test_submission_command_accepts_mail_and_stops_on_sigterm(
    tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    port = free_port(HOST)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    env.update(listener_env(tmp_path, tls, redis_server.url, port))
    process = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "submission"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(process, port)
        with smtplib.SMTP(HOST, port, local_hostname="app.example.test", timeout=10) as client:
            client.starttls(context=tls.client_context())
            client.login(USER, PASSWORD)
            assert client.sendmail(SENDER, ["zoe@implicit.test"], message()) == {}
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    assert f"listening on {HOST}:{port} (starttls)" in stderr
    assert stderr.rstrip().endswith("mailroom submission: stopped")
    # The log says what happened, without addresses or secrets.
    assert '"event":"accepted"' in stderr
    assert f'"account":"{USER}"' in stderr
    for private in (PASSWORD, SENDER, "zoe@", "Invoice"):
        assert private not in stderr
    [key] = redis_client.keys("mailroom:content:*")
    assert redis_client.hget(key, "sender") == SENDER.encode()


def test_submission_without_its_files_is_one_line_and_exit_2(
    tmp_path: Path, tls: TlsMaterial
) -> None:
    env = listener_env(tmp_path, tls, "redis://127.0.0.1:1/0", free_port(HOST))
    del env["MAILROOM_SUBMISSION_ACCOUNTS"]
    assert_usage_error(
        run_mailroom("submission", env=env, cwd=tmp_path), "MAILROOM_SUBMISSION_ACCOUNTS"
    )


@pytest.mark.parametrize(
    "case",
    [
        BadSetting("submission_cert_file", None, "MAILROOM_SUBMISSION_CERT_FILE", "required"),
        BadSetting("submission_key_file", None, "MAILROOM_SUBMISSION_KEY_FILE", "required"),
        BadSetting(
            "submission_key_file", "/nonexistent/key.pem", "MAILROOM_SUBMISSION_KEY_FILE", "no such"
        ),
        BadSetting("submission_key_file", "{cert}", "MAILROOM_SUBMISSION_CERT_FILE", "cannot load"),
        BadSetting(
            "submission_accounts", "{bad}", "MAILROOM_SUBMISSION_ACCOUNTS", "bad-accounts:2: "
        ),
        BadSetting("submission_accounts", "{empty}", "MAILROOM_SUBMISSION_ACCOUNTS", "no accounts"),
    ],
)
def test_build_server_names_the_bad_setting(
    tmp_path: Path, tls: TlsMaterial, case: BadSetting
) -> None:
    field, value, variable, problem = case
    good = submission_settings(tmp_path, tls, "redis://127.0.0.1:1/0", host=HOST)
    bad, empty = tmp_path / "bad-accounts", tmp_path / "empty-accounts"
    bad.write_text("# ok\nbilling-app:plain-text-password\n")
    empty.write_text("# nobody yet\n")
    if value is not None:
        value = value.format(bad=bad, empty=empty, cert=good.submission_cert_file)
    settings = good.model_copy(update={field: None if value is None else Path(value)})
    with pytest.raises(SettingsError) as excinfo:
        build_server(settings)
    message = str(excinfo.value)
    assert message.startswith(f"{variable}: ")
    assert problem in message
    assert "\n" not in message
    assert "plain-text-password" not in message
