"""`mailroom catcher`: a local SMTP server that accepts every message and keeps it in a Maildir.

`--listen` (default 127.0.0.1:1025) and `--web` (the read-only page, off unless given) must be
loopback addresses: the catcher takes mail from anyone who can connect, without
authentication, and shows it to anyone who can browse. `--dir` (default var/catcher) is the
Maildir, created when missing. Messages larger than MAILROOM_MAX_MESSAGE_BYTES are refused
(552), as the workers would refuse to send them; more than 100 connections at once get 421. One
line per message on stdout; start and stop on stderr. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from settings import Listen, Settings
from settings.parsing import parse_listen
from tasks.cli.errors import FAILED, OK, UsageError
from tasks.cli.signals import stop_on_signals

DEFAULT_LISTEN = "127.0.0.1:1025"
DEFAULT_DIR = "var/catcher"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "catcher",
        help="local SMTP server that keeps every message in a Maildir (for demos and tests)",
        description="Accept every message on a loopback address and store it as a Maildir file.",
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"loopback address and port of the SMTP server (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        metavar="PATH",
        help=f"the Maildir to store messages in, created when missing (default {DEFAULT_DIR})",
    )
    parser.add_argument(
        "--web",
        metavar="HOST:PORT",
        help="also serve a read-only page of the caught mail there (loopback, e.g. 127.0.0.1:8025)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    listen = _loopback("--listen", args.listen)
    web_listen = None if args.web is None else _loopback("--web", args.web)
    from tasks.catcher.handler import CatcherHandler
    from tasks.catcher.maildir import Maildir
    from tasks.catcher.server import CatcherController  # aiosmtpd: the `catcher` extra
    from tasks.catcher.web import CatcherWeb

    maildir = Maildir(Path(args.dir))
    try:
        maildir.create()
    except OSError as exc:
        raise UsageError(f"catcher: --dir {args.dir}: {exc.strerror or exc}") from None
    max_bytes = settings.max_message_bytes
    controller = CatcherController(CatcherHandler(maildir, _say), listen, max_bytes)
    web = None if web_listen is None else CatcherWeb(web_listen, maildir, max_bytes)
    stop = stop_on_signals()
    try:
        controller.start()
    except (OSError, RuntimeError) as exc:  # the port is taken (aiosmtpd may wrap the error)
        print(f"mailroom: catcher cannot listen on {listen}: {exc}", file=sys.stderr)
        return FAILED
    try:
        if web is not None:
            try:
                web.start()
            except OSError as exc:
                print(f"mailroom: catcher cannot serve on {web_listen}: {exc}", file=sys.stderr)
                return FAILED
        page = "" if web_listen is None else f", page at http://{web_listen}/"
        _note(f"listening on {listen}, storing in {maildir.root} (Maildir){page}")
        stop.wait()
    finally:
        if web is not None:
            web.stop()
        controller.stop()
    _note("stopped")
    return OK


def _loopback(option: str, text: str) -> Listen:
    try:
        listen = parse_listen(text)
    except ValueError as exc:
        raise UsageError(f"catcher: {option}: {exc}") from None
    if not listen.is_loopback:
        raise UsageError(
            f"catcher: {option} must be a loopback address such as 127.0.0.1"
            f" (it accepts and shows mail without authentication; got {text!r})"
        )
    return listen


def _say(line: str) -> None:
    print(line, flush=True)


def _note(text: str) -> None:
    print(f"mailroom catcher: {text}", file=sys.stderr, flush=True)
