"""The `mailroom` console script: parse the command line, load settings once, run one command.

Each command group is a module of this package with `register(commands)`, which adds its
sub-parser(s) and sets `run=<function(args, settings) -> int>` as the parser's default;
`_COMMANDS` lists the modules, so a new command is one line there. Settings are loaded only after
the command line parsed, so `--help` works with a broken environment. Bad input and bad
settings follow docs/contract.md: one line on stderr, exit status 2, nothing done.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

from settings import Settings, SettingsError, load_settings
from tasks.cli import (
    catcher,
    check,
    dlq,
    exporter,
    flower,
    passwd,
    queues,
    send,
    status,
    submission,
    worker,
)
from tasks.cli.errors import USAGE, UsageError, one_line

PROG = "mailroom"


class _Command(Protocol):
    # Any: the action is typed by the parser class (_Parser), which modules need not know.
    def register(self, commands: argparse._SubParsersAction[Any]) -> None: ...


# One module per command group, in the order `mailroom --help` lists them.
_COMMANDS: tuple[_Command, ...] = (
    send,
    status,
    queues,
    dlq,
    worker,
    flower,
    exporter,
    submission,
    catcher,
    passwd,
    check,
)


# The packages of the optional extras (pyproject.toml): a producer installs only the base and can
# still `mailroom send`; a command that needs more says which extra, in one line.
_EXTRA_OF = {
    "aiosmtplib": "worker",
    "dns": "worker",
    "certifi": "worker",
    "prometheus_client": "worker",
    "flower": "flower",
    "tornado": "flower",
    "aiosmtpd": "submission",
}
# Commands whose own extra holds a package another extra holds too.
_COMMAND_EXTRA = {"catcher": "catcher"}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and no usage dump (docs/contract.md).

    `add_subparsers` builds sub-parsers of the parent's class, so this covers every command.
    """

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()  # "" for `mailroom` itself
        raise UsageError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    """The `mailroom` parser with every command of `_COMMANDS` registered."""
    parser = _Parser(
        prog=PROG,
        description="Mailroom: queue notification e-mail in Redis and deliver it over SMTP.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _COMMANDS:
        module.register(commands)
    parser.set_defaults(command_names=", ".join(commands.choices))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mailroom` with `argv` (default: sys.argv[1:]); return the exit status.

    0 success, 1 a check or look-up failed, 2 bad input or a bad setting (one line on stderr).
    """
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version exit through argparse
            return exc.code if isinstance(exc.code, int) else USAGE
        if args.command is None:
            raise UsageError(f"no command given (choose from {args.command_names}; see --help)")
        settings: Settings = load_settings()
        status: int = args.run(args, settings)
        return status
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF.get((exc.name or "").partition(".")[0])
        extra = extra and _COMMAND_EXTRA.get(args.command, extra)
        if extra is None:
            raise
        print(
            f"{PROG}: {args.command} needs the '{extra}' extra, which is not installed:"
            f" pip install 'mailroom[{extra}]' (or run scripts/setup)",
            file=sys.stderr,
        )
        return USAGE
    except (UsageError, SettingsError) as exc:
        print(f"{PROG}: {one_line(str(exc))}", file=sys.stderr)
        return USAGE
