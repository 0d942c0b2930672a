"""`mailroom worker [--shards 0-3,7] [--concurrency N]`: a Celery worker on shard queues.

The worker uses Celery's threads pool: N task threads share the process's one event loop, each
batch runs its sessions concurrently on it. It also consumes `mailroom.intake` and runs the
deferred sweeper. SIGTERM is Celery's warm shutdown: running deliveries finish, the rest go back.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from settings import Settings
from tasks.cli.errors import OK, UsageError, positive_int
from tasks.dkim.keys import load_signing_keys
from tasks.routing import INTAKE_QUEUE, parse_shards, shard_queue


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("worker", help="run a worker on shard queues (default: all)")
    parser.add_argument("--shards", help="shard numbers and ranges, e.g. 0-3,7 (default: all)")
    parser.add_argument(
        "--concurrency", type=positive_int, default=8, help="batches in flight at once (default 8)"
    )
    parser.add_argument(
        "--loglevel", help="log level for this worker (default: MAILROOM_LOG_LEVEL, info)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        every = range(settings.shards)
        shards = parse_shards(args.shards, settings.shards) if args.shards else every
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    from tasks.worker_app import create_app  # the engine loads only for the worker

    # Read once, before Celery starts: a missing or unusable key is one line, exit 2.
    signing_keys = load_signing_keys(settings.dkim_keys)
    queues = ",".join([INTAKE_QUEUE, *(shard_queue(k) for k in shards)])
    app = create_app(settings, signing_keys)
    argv = ["worker", "--pool=threads", f"--concurrency={args.concurrency}", f"--queues={queues}"]
    level = (args.loglevel or settings.log_level.value).upper()
    argv += [f"--loglevel={level}", f"--hostname=mailroom-{os.getpid()}@%h"]
    argv += ["--without-mingle", "--without-gossip"]
    try:
        app.worker_main(argv)  # returns only by SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else OK
