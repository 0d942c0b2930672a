"""Secrets from files: `MAILROOM_<NAME>_FILE=/path` and a secrets directory (`/run/secrets` as
Docker and Compose mount it, or MAILROOM_SECRETS_DIR), so no secret has to be an environment
variable (which `docker inspect` shows and child processes inherit)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

import settings.sources as settings_module
from settings import SettingsError, load_settings
from tests.tasks.test_cli import run_mailroom

PASSWORD = "pa55 word"  # a space inside, kept as is


@pytest.fixture(autouse=True)
def no_default_secrets_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test starts without a default secrets directory, whatever this machine has."""
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", tmp_path / "none", raising=False)
    monkeypatch.chdir(tmp_path)  # no `.env`


def test_a_file_variable_gives_the_content_without_its_trailing_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(f"{PASSWORD}\n")
    (tmp_path / "auth").write_text("admin:hunter2\r\n")
    (tmp_path / "redis").write_text("redis://:redispass@127.0.0.1:6379/1\n")
    monkeypatch.setenv("MAILROOM_RELAY_USERNAME", "svc@example.com")
    monkeypatch.setenv("MAILROOM_RELAY_PASSWORD_FILE", str(tmp_path / "password"))
    monkeypatch.setenv("MAILROOM_FLOWER_BASIC_AUTH_FILE", str(tmp_path / "auth"))
    monkeypatch.setenv("MAILROOM_REDIS_URL_FILE", str(tmp_path / "redis"))

    settings = load_settings()

    assert settings.relay_password is not None
    assert settings.relay_password.get_secret_value() == PASSWORD
    assert settings.flower_basic_auth is not None
    assert settings.flower_basic_auth.get_secret_value() == "admin:hunter2"
    assert settings.redis_url == "redis://:redispass@127.0.0.1:6379/1"


def test_a_missing_file_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAILROOM_RELAY_PASSWORD_FILE", str(tmp_path / "missing"))

    with pytest.raises(SettingsError) as raised:
        load_settings()

    message = str(raised.value)
    assert message.startswith("MAILROOM_RELAY_PASSWORD_FILE: cannot read ")
    assert str(tmp_path / "missing") in message
    assert "\n" not in message


def test_a_variable_and_its_file_variable_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(PASSWORD)
    monkeypatch.setenv("MAILROOM_RELAY_PASSWORD", PASSWORD)
    monkeypatch.setenv("MAILROOM_RELAY_PASSWORD_FILE", str(tmp_path / "password"))

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert str(raised.value).startswith("MAILROOM_RELAY_PASSWORD_FILE: ")
    assert PASSWORD not in str(raised.value)


def test_a_bad_secret_from_a_file_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "auth").write_text("no-colon-secret\n")
    monkeypatch.setenv("MAILROOM_FLOWER_BASIC_AUTH_FILE", str(tmp_path / "auth"))

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert str(raised.value).startswith("MAILROOM_FLOWER_BASIC_AUTH: ")
    assert "no-colon-secret" not in str(raised.value)


def test_the_secrets_directory_supplies_any_setting_by_its_variable_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "mailroom_relay_password").write_text(f"{PASSWORD}\n")
    (secrets / "unrelated").write_text("ignored")
    monkeypatch.setenv("MAILROOM_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("MAILROOM_RELAY_USERNAME", "svc@example.com")

    settings = load_settings()

    assert settings.relay_password is not None
    assert settings.relay_password.get_secret_value() == PASSWORD


def test_run_secrets_is_the_default_directory_when_it_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = tmp_path / "run-secrets"
    default.mkdir()
    (default / "mailroom_relay_password").write_text(PASSWORD)
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", default, raising=False)
    monkeypatch.setenv("MAILROOM_RELAY_USERNAME", "svc@example.com")

    settings = load_settings()

    assert settings.relay_password is not None
    assert settings.relay_password.get_secret_value() == PASSWORD
    # An environment variable still wins over the directory.
    monkeypatch.setenv("MAILROOM_RELAY_PASSWORD", "from-env")
    assert load_settings().relay_password == SecretStr("from-env")


def test_without_any_secrets_directory_nothing_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest turns warnings into errors: pydantic-settings warns about a missing directory.
    assert load_settings().relay_password is None


def test_a_secrets_dir_that_does_not_exist_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAILROOM_SECRETS_DIR", str(tmp_path / "nowhere"))

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert str(raised.value).startswith("MAILROOM_SECRETS_DIR: no such directory")


def test_the_cli_exits_2_with_one_line_for_a_missing_secret_file(tmp_path: Path) -> None:
    run = run_mailroom(
        "queues",
        env={"MAILROOM_RELAY_PASSWORD_FILE": str(tmp_path / "missing")},
        cwd=tmp_path,
    )

    assert run.status == 2, run
    [line] = run.stderr_lines
    assert "MAILROOM_RELAY_PASSWORD_FILE: cannot read" in line
    assert "Traceback" not in run.stderr
