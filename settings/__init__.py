"""Mailroom's configuration: one Settings model read from MAILROOM_* variables and `.env`.

Entry points call `load_settings()` once and pass the result (or the parts of it a component
needs) down; nothing else reads the environment.
"""

from settings.errors import SettingsError, env_name
from settings.parsing import Listen, Nameserver, Rate
from settings.settings import (
    DeliveryMode,
    LogLevel,
    RelayProfile,
    RelaySecurity,
    Settings,
    SubmissionTls,
    load_settings,
)

__all__ = [
    "DeliveryMode",
    "Listen",
    "LogLevel",
    "Nameserver",
    "Rate",
    "RelayProfile",
    "RelaySecurity",
    "Settings",
    "SettingsError",
    "SubmissionTls",
    "env_name",
    "load_settings",
]
