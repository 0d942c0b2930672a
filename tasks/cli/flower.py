"""`mailroom flower`: Flower for this deployment, on MAILROOM_FLOWER_LISTEN.

Basic auth comes from MAILROOM_FLOWER_BASIC_AUTH (or its file) and reaches Flower through its
own environment variable, never the command line (which every local user can read in the process
list). Settings already refuse a non-loopback address without it. Flower's process gets no other
MAILROOM_* variable than the few its Celery app reads (`flower_environment`): the relay's
credentials and every other setting stay out of its environment, and it reads no secrets
directory. The tasks page shows each task's args (message ids and destinations) and result (what
each delivery came to, with the reply), which Flower's default columns leave out;
`tasks.flower_display` hides the notification fields that `mailroom.notify` tasks carry.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from settings import ENV_PREFIX, FILE_FIELDS, SECRETS_DIR_VARIABLE, Settings, env_name
from tasks import flower_display

TASK_COLUMNS = "name,uuid,state,args,result,received,runtime,worker"
# What Flower's Celery app (tasks.celery_main) reads: the broker, its timeouts, the shard count
# for the broker page, and SESSION_TIMEOUT, which settings check against VISIBILITY_TIMEOUT.
FLOWER_FIELDS = (
    "redis_url",
    "redis_timeout",
    "visibility_timeout",
    "session_timeout",
    "shards",
    "log_level",
)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("flower", help="Flower on MAILROOM_FLOWER_LISTEN")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if importlib.util.find_spec("flower") is None:
        # Checked here, not by Celery after the exec: tasks.cli names the missing extra in one line.
        raise ModuleNotFoundError("No module named 'flower'", name="flower")
    listen = settings.flower_listen
    env = flower_environment(os.environ, settings)
    argv = [sys.executable, "-m", "celery", "-A", "tasks.celery_main", "flower"]
    argv += [f"--address={listen.host}", f"--port={listen.port}", f"--tasks-columns={TASK_COLUMNS}"]
    # Flower's format_task hook keeps notification content off its pages.
    argv += [f"--conf={flower_display.__file__}"]
    os.execve(sys.executable, argv, env)


def flower_environment(environ: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """Flower's environment: `environ` without any MAILROOM_* variable, then the FLOWER_FIELDS
    settings (a `*_FILE` variable passed on as it is, so a Redis password in a file stays
    there; else the value as loaded), no secrets directory, and FLOWER_BASIC_AUTH when basic
    auth is set."""
    env = {
        name: value for name, value in environ.items() if not name.upper().startswith(ENV_PREFIX)
    }
    for field in FLOWER_FIELDS:
        file_variable = f"{env_name(field)}_FILE"
        if field in FILE_FIELDS and environ.get(file_variable):
            env[file_variable] = environ[file_variable]
            continue
        value = getattr(settings, field)
        env[env_name(field)] = value.value if isinstance(value, StrEnum) else str(value)
    env[SECRETS_DIR_VARIABLE] = ""  # empty: none, so no secret file is read in there either
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    return env
