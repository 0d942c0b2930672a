"""`mailroom flower`: Flower for this deployment, on MAILROOM_FLOWER_LISTEN.

Basic auth comes from MAILROOM_FLOWER_BASIC_AUTH and reaches Flower through its own environment
variable, never the command line (which every local user can read in the process list). Settings
already refuse a non-loopback address without it. The tasks page shows each task's args (message
ids and destinations) and result (what each delivery came to, with the reply), which Flower's
default columns leave out; `tasks.flower_display` hides the notification fields that
`mailroom.notify` tasks carry.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from settings import Settings
from tasks import flower_display

TASK_COLUMNS = "name,uuid,state,args,result,received,runtime,worker"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("flower", help="Flower on MAILROOM_FLOWER_LISTEN")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    listen = settings.flower_listen
    env = dict(os.environ)
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    argv = [sys.executable, "-m", "celery", "-A", "tasks.celery_main", "flower"]
    argv += [f"--address={listen.host}", f"--port={listen.port}", f"--tasks-columns={TASK_COLUMNS}"]
    # Flower's format_task hook keeps notification content off its pages.
    argv += [f"--conf={flower_display.__file__}"]
    os.execve(sys.executable, argv, env)
