"""`mailroom passwd USERNAME [--sender S]...`: the account line for MAILROOM_SUBMISSION_ACCOUNTS.

Reads the password from stdin (the first line, without its line end) or, on a terminal, asks for
it twice without echo; prints `USERNAME:scrypt$...[:SENDERS]` on stdout (the format is in
tasks/submission/accounts.py). Only a salted hash is printed, never the password. Each --sender
is an address, `@domain` or `*`; without any the account may use any sender.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from settings import Settings
from tasks.cli.errors import OK, UsageError
from tasks.submission.accounts import AccountError, SenderPolicy, check_username, new_account


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "passwd", help="read a password on stdin, print the account line for SUBMISSION_ACCOUNTS"
    )
    parser.add_argument("username", help="the account's SMTP AUTH username")
    parser.add_argument(
        "--sender",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a sender the account may use: addr@domain, @domain or * (repeatable; default: any)",
    )
    parser.set_defaults(run=run, uses_redis=False)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        # Checked before the password is asked for, so a typo costs no typing.
        check_username(args.username)
        SenderPolicy.parse(args.sender)
        password = _read_password()
        account = new_account(args.username, password, args.sender)
    except AccountError as exc:
        raise UsageError(f"passwd: {exc}") from None
    print(account.line())
    return OK


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise UsageError("passwd: the two passwords differ")
        return first
    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise UsageError("passwd: no password on stdin (expected it on the first line)")
    return password
