"""Where settings come from besides the environment: `.env` (fields only), `MAILROOM_<NAME>_FILE`
secret files and the secrets directory, in the order `Settings` reads them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SecretsSettingsSource

from settings.errors import ENV_PREFIX, SettingsError, env_name

SECRET_FIELDS = frozenset(
    {"relay_password", "oauth_client_secret", "flower_basic_auth", "webhooks"}
)
# Settings that may hold a secret, each also readable from the file MAILROOM_<NAME>_FILE names.
FILE_FIELDS = frozenset({*SECRET_FIELDS, "redis_url"})
SECRETS_DIR_VARIABLE = f"{ENV_PREFIX}SECRETS_DIR"
DEFAULT_SECRETS_DIR = Path("/run/secrets")  # where Docker and Compose mount secrets
_MAX_SECRET_BYTES = 65536  # a secret file larger than this is the wrong file


def later_sources(
    settings_cls: type[BaseSettings],
    dotenv: PydanticBaseSettingsSource,
    secrets: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The sources read after keyword arguments and the environment, in order: secret files,
    `.env` (`dotenv`, fields only), the secrets directory (`secrets` when there is none)."""
    # With extra="forbid" the dotenv source hands every unknown line on as an extra field.
    fields_only = _FieldsOnly(settings_cls, dotenv)
    files = _SecretFiles(settings_cls, os.environ)
    secrets_dir = _secrets_dir(os.environ)
    if secrets_dir is not None:
        # pydantic-settings warns about a directory that does not exist: only an existing
        # one is ever handed over (_secrets_dir refuses a named one that is missing).
        secrets = SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir)
    return files, fields_only, secrets


class _FieldsOnly(PydanticBaseSettingsSource):
    """Wraps a source and drops every key that is not a field of the settings class."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {key: value for key, value in self._inner().items() if key in fields}


class _SecretFiles(PydanticBaseSettingsSource):
    """`MAILROOM_<NAME>_FILE=/path` for the settings of FILE_FIELDS: the file's content, without
    its trailing newline, is the value (an empty file leaves the setting unset)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field in sorted(FILE_FIELDS):
            variable = f"{env_name(field)}_FILE"
            path = self._environ.get(variable, "")
            if not path:
                continue
            if self._environ.get(env_name(field)):
                raise SettingsError(
                    variable, f"set either {env_name(field)} or {variable}, not both"
                )
            value = read_secret_file(variable, Path(path))
            if value:
                values[field] = value
        return values


def read_secret_file(variable: str, path: Path) -> str:
    """The text of the secret file `variable` names, without its trailing newline.

    :raises SettingsError: it cannot be read, is too large, or is not UTF-8 (the content is
        never shown).
    """
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SettingsError(variable, f"cannot read '{path}': {exc.strerror or exc}") from None
    if len(data) > _MAX_SECRET_BYTES:
        raise SettingsError(variable, f"'{path}' is larger than {_MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(variable, f"'{path}' is not UTF-8 text") from None
    return text.rstrip("\r\n")


def _secrets_dir(environ: Mapping[str, str]) -> Path | None:
    """MAILROOM_SECRETS_DIR (empty: none), else DEFAULT_SECRETS_DIR when it is a directory.

    :raises SettingsError: MAILROOM_SECRETS_DIR names no directory.
    """
    named = environ.get(SECRETS_DIR_VARIABLE)
    if named is None:
        return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None
    if not named:
        return None
    if not Path(named).is_dir():
        raise SettingsError(SECRETS_DIR_VARIABLE, f"no such directory (got '{named}')")
    return Path(named)
