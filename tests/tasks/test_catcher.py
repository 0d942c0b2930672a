"""`mailroom catcher` as a developer runs it: a real subprocess, mail sent with smtplib, the
Maildir file and the printed line checked, and the read-only page fetched over HTTP."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tasks.catcher.maildir import Maildir
from tasks.catcher.server import MAX_CONNECTIONS
from tests.tasks.submission_support import free_port
from tests.tasks.test_cli import assert_usage_error, run_mailroom

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.23"
# An ANSI colour, a bidirectional override and a forged line: none may reach the terminal raw.
CRAFTED_SUBJECT = "Invoice \x1b[31mPAID\x1b[0m \u202etxt.exe\r\nFAKE LINE"


@dataclass
class Catcher:
    process: subprocess.Popen[str]
    port: int
    web: int
    maildir: Path

    def stop(self) -> tuple[str, str]:
        """SIGTERM, then what it printed (stdout, stderr)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.communicate(timeout=20)


@contextmanager
def running_catcher(tmp_path: Path, **env: str) -> Iterator[Catcher]:
    """`mailroom catcher` on HOST, its page too, storing in tmp_path/caught; `env` added."""
    port, web = free_port(HOST), free_port(HOST)
    maildir = tmp_path / "caught"
    options = ["--listen", f"{HOST}:{port}", "--dir", str(maildir), "--web", f"{HOST}:{web}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "catcher", *options],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, process.communicate()
            try:
                with smtplib.SMTP(HOST, port, timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the catcher did not start listening"
                time.sleep(0.05)
        yield Catcher(process, port, web, maildir)
    finally:
        if process.poll() is None:
            process.kill()  # our own child, by its PID
            process.communicate()


def crafted_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "App <app@example.com>"
    message["To"] = "you@example.org"
    # The header API refuses CR/LF; the raw bytes below put the attacker's version on the wire.
    message["Subject"] = "placeholder"
    message.set_content("Hello <script>alert(1)</script>\n")
    return message


def raw_with_subject(message: EmailMessage, subject: str) -> bytes:
    data = message.as_bytes(policy=email.policy.SMTP)
    # A subject sent as one encoded word, so the CR LF inside stays inside the header.
    encoded = email.header.Header(subject, "utf-8").encode()
    return data.replace(b"Subject: placeholder", b"Subject: " + encoded.encode("ascii"))


@pytest.mark.slow  # a CLI subprocess
def test_catcher_stores_a_maildir_file_and_prints_one_escaped_line(tmp_path: Path) -> None:
    with running_catcher(tmp_path) as catcher:
        data = raw_with_subject(crafted_message(), CRAFTED_SUBJECT)
        with smtplib.SMTP(HOST, catcher.port, timeout=10) as client:
            refused = client.sendmail(
                "app@example.com", ["you@example.org", "audit@example.org"], data
            )
        assert refused == {}
        stdout, stderr = catcher.stop()

    assert catcher.process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert f"listening on {HOST}:{catcher.port}" in stderr
    assert stderr.rstrip().endswith("mailroom catcher: stopped")
    # Maildir: nothing left in tmp/, one file in new/ that a mail client can parse.
    assert sorted(p.name for p in catcher.maildir.iterdir()) == ["cur", "new", "tmp"]
    assert list((catcher.maildir / "tmp").iterdir()) == []
    [stored] = list((catcher.maildir / "new").iterdir())
    content = stored.read_bytes()
    assert content.startswith(
        b"Return-Path: <app@example.com>\nDelivered-To: you@example.org\n"
        b"Delivered-To: audit@example.org\n"
    )
    assert b"\r\n" not in content  # Maildir files have Unix line ends
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed["From"] == "App <app@example.com>"
    assert "\x1b[31mPAID" in str(parsed["Subject"])
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content() == "Hello <script>alert(1)</script>\n"
    # One line per message, the peer's bytes escaped: no ESC, no override, no second line.
    [line] = stdout.splitlines()
    for raw in ("\x1b", "\u202e", "\r"):
        assert raw not in stdout
    assert "from=<app@example.com> to=you@example.org,audit@example.org" in line
    # (The header parser unfolds the CR LF inside the encoded word to a space.)
    assert 'subject="Invoice \\x1b[31mPAID\\x1b[0m \\u202etxt.exe FAKE LINE"' in line
    assert f" size={len(data)} " in line
    assert line.endswith(f"file=new/{stored.name}")


def fetch(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


@pytest.mark.slow  # a CLI subprocess
def test_catcher_page_lists_messages_with_everything_escaped(tmp_path: Path) -> None:
    with running_catcher(tmp_path) as catcher:
        data = raw_with_subject(crafted_message(), "<img src=x onerror=alert(1)> \u202eevil")
        with smtplib.SMTP(HOST, catcher.port, timeout=10) as client:
            client.sendmail("app@example.com", ["you@example.org"], data)
        base = f"http://{HOST}:{catcher.web}"
        status, listing, headers = fetch(base + "/")
        [stored] = Maildir(catcher.maildir).messages(10)
        page_status, page, _ = fetch(f"{base}/m/{stored.name}")
        missing, _, _ = fetch(f"{base}/m/..%2F..%2Fetc%2Fpasswd")
        catcher.stop()

    assert status == 200
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "&lt;img src=x onerror=alert(1)&gt; \\u202eevil" in listing
    assert "<img" not in listing
    assert "\u202e" not in listing
    assert f'href="/m/{stored.name}"' in listing
    assert page_status == 200
    assert "Hello &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page
    assert "<th>Return-Path</th><td>&lt;app@example.com&gt;</td>" in page
    assert missing == 404


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--listen", "0.0.0.0:1025"), ["--listen", "loopback"]),
        (("--listen", "192.0.2.1:1025"), ["--listen", "loopback"]),
        (("--listen", "127.0.0.1"), ["--listen", "host:port"]),
        (("--web", "0.0.0.0:8025"), ["--web", "loopback"]),
    ],
)
def test_catcher_refuses_a_non_loopback_address(
    tmp_path: Path, args: tuple[str, ...], words: list[str]
) -> None:
    run = run_mailroom("catcher", *args, cwd=tmp_path)

    assert_usage_error(run, *words)
    assert not (tmp_path / "var").exists()  # nothing done


@pytest.mark.slow  # a CLI subprocess
def test_catcher_refuses_a_message_over_max_message_bytes(tmp_path: Path) -> None:
    with running_catcher(tmp_path, MAILROOM_MAX_MESSAGE_BYTES="2000") as catcher:
        big = b"Subject: big\r\n\r\n" + b"x" * 5000
        with (
            smtplib.SMTP(HOST, catcher.port, timeout=10) as client,
            pytest.raises(smtplib.SMTPSenderRefused) as refused,
        ):
            client.sendmail("a@example.com", ["b@example.org"], big)
        stdout, _ = catcher.stop()

    assert refused.value.smtp_code == 552
    assert stdout == ""
    assert list((catcher.maildir / "new").iterdir()) == []


@pytest.mark.slow  # a CLI subprocess
def test_catcher_refuses_connections_over_its_cap_before_the_greeting(tmp_path: Path) -> None:
    with running_catcher(tmp_path) as catcher, ExitStack() as held:
        for _ in range(MAX_CONNECTIONS):
            client = held.enter_context(smtplib.SMTP(HOST, catcher.port, timeout=10))
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(HOST, catcher.port, timeout=10)
        # The ones it took are served as usual.
        assert client.noop()[0] == 250
        held.close()
        with smtplib.SMTP(HOST, catcher.port, timeout=10) as again:
            assert again.noop()[0] == 250
        catcher.stop()

    assert refused.value.smtp_code == 421
    assert b"4.7.0 Too many connections" in refused.value.smtp_error
