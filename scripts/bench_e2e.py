"""Benchmark: Mailroom end to end, producer → Redis → `mailroom worker` processes → an SMTP sink.

    scripts/bench --scenario cpu|latency|deferred [--n N] [--dkim rsa|ed25519]
                  [--events off|on|webhook] [--json]
    PYTHONPATH=. .venv/bin/python scripts/bench_e2e.py --scenario cpu --n 2000

Scenarios (every server on loopback, started here and stopped by PID at the end):
  cpu       N notifications of about 2 KB, one recipient each, all to one destination
            (bench.test, MX 127.0.0.2) whose sink answers at once: what Mailroom costs per message
  latency   N notifications spread over 200 destinations (d0..d199.test, MX 127.0.0.3, one sink
            process) whose sink answers each command 50 ms late, like a server across the internet
  deferred  N deliveries (100,000) deferred a day ahead: worker RSS while they wait, while 1,000
            real ones bounce, and the mover's cost (sweeper + Redis CPU per delivery made due)
Without --scenario, all three run one after the other.

cpu and latency measure: messages/s from the first enqueue to the last 250 at the sink; CPU ms
per message of the producer (this process's producing thread), the workers and redis-server
(the sum is Mailroom's cost; the sink's and dnsmasq's are shown apart); p50/p99 from enqueue
(the start of the notify_many call of its chunk) to the sink's 250 after DATA, both stamped with
time.time() on this machine; worker peak RSS; Redis bytes per queued message (a sample queued
with no worker running, INFO used_memory before and after); SMTP sessions and messages per
session; Redis commands per message (INFO commandstats). Redis persists as production would
(AOF, fsync every second).

The table goes to stdout, or with --json to stderr and one JSON object to stdout; the progress
line goes to stderr. Every wait is bounded; a run that does not complete says what is missing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

from benchlib.deferred import DeferredRun
from benchlib.dkim_key import ALGORITHMS
from benchlib.report import deferred_table, throughput_table
from benchlib.scenarios import Options, scenario
from benchlib.stats import emit_json
from benchlib.throughput import ThroughputRun

from tasks.cli.errors import positive_int

SCENARIOS = ("cpu", "latency", "deferred")
DEFAULT_N = {"cpu": 20_000, "latency": 20_000, "deferred": 100_000}


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenario (or all three); print the table(s), and the JSON with --json."""
    names = [args.scenario] if args.scenario else list(SCENARIOS)
    out = sys.stderr if args.json else sys.stdout
    options = Options(
        workers=args.workers,
        concurrency=args.concurrency,
        shards=args.shards,
        split=args.split,
        max_connections=args.max_connections,
        chunk=args.chunk,
        rate=args.rate,
        redis_sample=args.redis_sample,
        loglevel=args.loglevel,
        dkim=args.dkim,
        events=args.events,
    )
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        n = args.n or DEFAULT_N[name]
        if name == "deferred":
            result = DeferredRun(n, args.due, args.sample_seconds).run()
            deferred_table(result, out)
        else:
            result = ThroughputRun(scenario(name), n, options).run()
            throughput_table(result, out)
        result["code"] = code_version()
        results[name] = result
    if args.json:
        emit_json(results[names[0]] if len(names) == 1 else results)
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad input: one line on stderr naming what is wrong, exit status 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"bench: {message}\n")


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the engine's files differed from it (figures move)."""
    repo = Path(__file__).resolve().parents[1]

    def git(*arguments: str) -> str:
        try:
            done = subprocess.run(
                ["git", *arguments],
                cwd=repo,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "settings", "workers", "tasks")
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "modified": bool(changed)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=SCENARIOS, help="default: all three in turn")
    parser.add_argument(
        "--n",
        "--count",
        type=positive_int,
        help="messages (deferred: deliveries deferred); default 20,000 (deferred 100,000)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--workers", type=positive_int, default=2, help="worker processes (2)")
    parser.add_argument("--concurrency", type=positive_int, default=8, help="threads each (8)")
    parser.add_argument("--shards", type=positive_int, default=8, help="MAILROOM_SHARDS (8)")
    parser.add_argument(
        "--split",
        action="store_true",
        help="give each worker its own range of shards (default: every worker takes all)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=64,
        help='MAILROOM_MAX_CONNECTIONS {"*": N} (64)',
    )
    parser.add_argument("--chunk", type=positive_int, default=500, help="per notify_many (500)")
    parser.add_argument("--rate", type=float, help="pace the producer, msg/s (default: flat out)")
    parser.add_argument(
        "--redis-sample", type=positive_int, default=2000, help="queued for bytes/message (2,000)"
    )
    parser.add_argument("--loglevel", default="info", help="the workers' log level (info)")
    parser.add_argument(
        "--dkim",
        choices=ALGORITHMS,
        help="cpu/latency: sign every message with a throwaway RSA-2048 or Ed25519 key (off)",
    )
    parser.add_argument(
        "--events",
        choices=("off", "on", "webhook"),
        default="on",
        help="cpu/latency: no event log (off), the log only (on), or one webhook as well",
    )
    parser.add_argument(
        "--due", type=int, default=1000, help="deferred: how many are real and bounce (1,000)"
    )
    parser.add_argument(
        "--sample-seconds", type=float, default=10.0, help="deferred: RSS sampling, set full (10)"
    )
    args = parser.parse_args(argv)
    if args.split and args.shards < args.workers:
        parser.error("--split needs at least as many --shards as --workers")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be above 0")
    if args.due < 0:
        parser.error("--due must be 0 or more")
    return args


def main() -> None:
    args = parse_args()
    try:
        sys.exit(run(args))
    except KeyboardInterrupt:
        sys.exit(130)
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
