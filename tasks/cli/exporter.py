"""`mailroom exporter`: the cluster's Prometheus metrics at http://MAILROOM_METRICS_LISTEN/metrics.

The server (`tasks.cli.exporter_app`) loads only when the command runs: prometheus-client is in
the `worker` extra, and a producer's `mailroom send` must work without it.
"""

from __future__ import annotations

import argparse
from typing import Any

from settings import Settings


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("exporter", help="Prometheus metrics at METRICS_LISTEN/metrics")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tasks.cli.exporter_app import serve

    return serve(settings)
