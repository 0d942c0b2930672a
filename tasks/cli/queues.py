"""`mailroom queues [--json]`: depth of every shard queue, the intake, deferred and dead letters,
and the suppression list's size."""

from __future__ import annotations

import argparse
import json
from typing import Any

import redis

from settings import Settings
from tasks.cli.errors import OK
from tasks.routing import INTAKE_QUEUE, all_shard_queues
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.redis_client import redis_client
from workers.queue.suppression import SuppressionList

# kombu's Redis transport keeps priority sub-queues beside each queue ("name\x06\x16N").
_PRIORITY_SEPARATOR = "\x06\x16"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("queues", help="queue depths, deferred and dead letters")
    parser.add_argument("--json", action="store_true", help="print the depths as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    client = redis_client(settings.redis_url, settings.redis_timeout)
    depths = queue_depths(client, settings.shards)
    if args.json:
        print(json.dumps(depths))
        return OK
    for name, depth in depths["shards"].items():
        print(f"{name:<24} {depth}")
    for name in ("intake", "deferred", "dead", "suppressed"):
        print(f"{name:<24} {depths[name]}")
    return OK


def queue_depths(client: redis.Redis, shards: int) -> dict[str, Any]:
    """The `mailroom queues --json` shape of docs/contract.md."""
    return {
        "shards": {name: _depth(client, name) for name in all_shard_queues(shards)},
        "intake": _depth(client, INTAKE_QUEUE),
        "deferred": DeferredSet(client).count(),
        "dead": DeadLetters(client, ttl=1).count(),
        "suppressed": SuppressionList(client).size(),
    }


def _depth(client: redis.Redis, queue: str) -> int:
    names = [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{p}" for p in range(1, 10))]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    return sum(int(n) for n in pipe.execute())
