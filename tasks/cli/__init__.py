"""The `mailroom` console script: parse the command line, load settings once, run one command.

Each command group is a module of this package with `register(commands)`, which adds its
sub-parser(s) and sets `run=<function(args, settings) -> int>` as the parser's default;
`_COMMANDS` lists the modules, so a new command is one line there. Settings are loaded only after
the command line parsed, so `--help` works with a broken environment. Bad input and bad
settings follow docs/contract.md: one line on stderr, exit status 2, nothing done. Every other
expected failure is one line too: Redis unreachable exits 3, an error Redis answered with exits 1,
Ctrl-C exits 130. A traceback is left only for bugs. `--verbose` (on `mailroom` and on every
command) names the Redis used, its password redacted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn, Protocol

import kombu.exceptions
import redis

from settings import Settings, SettingsError, load_settings
from settings.settings import redact_url
from tasks.cli import (
    catcher,
    check,
    dlq,
    events,
    exporter,
    flower,
    passwd,
    queue,
    queues,
    send,
    status,
    submission,
    suppression,
    worker,
)
from tasks.cli.errors import (
    FAILED,
    INTERRUPTED,
    REDIS_UNAVAILABLE,
    USAGE,
    UsageError,
    one_line,
)
from tasks.cli.redis_access import say_which, scrub

PROG = "mailroom"


class _Command(Protocol):
    # Any: the action is typed by the parser class (_Parser), which modules need not know.
    def register(self, commands: argparse._SubParsersAction[Any]) -> None: ...


# One module per command group, in the order `mailroom --help` lists them.
_COMMANDS: tuple[_Command, ...] = (
    send,
    status,
    queue,
    queues,
    dlq,
    suppression,
    events,
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
    "msal": "worker",
    "google": "worker",
    "requests": "worker",
    "cryptography": "worker",
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
    parser.add_argument(
        "--version", action="version", version=f"{PROG} {_version()}", help="print the version"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _COMMANDS:
        module.register(commands)
    for command in _all_parsers(commands):
        # SUPPRESS: a command's own default must not undo `mailroom --verbose COMMAND`.
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE
        )
    parser.set_defaults(command_names=", ".join(commands.choices), uses_redis=True)
    return parser


_VERBOSE = "also say which Redis is used (password redacted), on stderr"


def _all_parsers(commands: argparse._SubParsersAction[Any]) -> Iterator[argparse.ArgumentParser]:
    """Every command's parser, and those of the actions of command groups (`dlq list`)."""
    for parser in dict.fromkeys(commands.choices.values()):  # aliases map to the same parser
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from _all_parsers(action)


def _version() -> str:
    try:
        return version("mailroom")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mailroom` with `argv` (default: sys.argv[1:]); return the exit status.

    0 success, 1 a check or look-up failed, 2 bad input or a bad setting, 3 Redis unavailable
    (each failure one line on stderr).
    """
    parser = build_parser()
    settings: Settings | None = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version exit through argparse
            return exc.code if isinstance(exc.code, int) else USAGE
        if args.command is None:
            raise UsageError(f"no command given (choose from {args.command_names}; see --help)")
        settings = load_settings()
        if args.verbose and args.uses_redis:
            say_which(settings)
        status: int = args.run(args, settings)
        return status
    except (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError) as exc:
        # kombu's: Redis went away while the tasks were being published.
        assert settings is not None  # only commands given settings talk to Redis
        where = redact_url(settings.redis_url)
        detail = scrub(one_line(str(exc) or type(exc).__name__), settings.redis_url)
        print(f"{PROG}: {args.command}: Redis unavailable at {where}: {detail}", file=sys.stderr)
        return REDIS_UNAVAILABLE
    except redis.RedisError as exc:  # Redis answered, with an error (read-only replica, OOM)
        assert settings is not None
        detail = scrub(one_line(str(exc) or type(exc).__name__), settings.redis_url)
        print(f"{PROG}: {args.command}: Redis refused: {detail}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return INTERRUPTED
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
