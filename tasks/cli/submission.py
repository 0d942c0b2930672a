"""`mailroom submission`: the SMTP submission listener, on MAILROOM_SUBMISSION_LISTEN.

Applications that can only be given "an SMTP server" (host, port, username, password) send
through it; each message is queued like any other notification and answered 250 only once it is
in Redis. Needs MAILROOM_SUBMISSION_CERT_FILE, _KEY_FILE and _ACCOUNTS (missing or unusable: one
line, exit 2). Runs until SIGTERM or SIGINT, then stops accepting, lets messages being queued
finish, and exits 0. Logs one JSON line per login, refusal and accepted message on stderr;
never an address, a password or message content.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from settings import Settings
from tasks.cli.errors import FAILED, OK
from tasks.cli.signals import stop_on_signals


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "submission", help="SMTP submission listener on SUBMISSION_LISTEN (AUTH after TLS)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tasks.submission.server import build_server  # aiosmtpd: the `submission` extra

    server = build_server(settings)  # SettingsError here: one line, exit 2 (tasks.cli.main)
    _configure_logging(settings)
    stop = stop_on_signals()
    try:
        server.start()
    except OSError as exc:  # the port is taken, or the host is no address of this machine
        print(
            f"mailroom: submission cannot listen on {settings.submission_listen}: {exc}",
            file=sys.stderr,
        )
        return FAILED
    print(
        f"mailroom submission: listening on {settings.submission_listen}"
        f" ({settings.submission_tls.value})",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    server.stop()
    print("mailroom submission: stopped", file=sys.stderr, flush=True)
    return OK


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.value.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every command at INFO, addresses included; only its warnings are kept.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
