"""The settings of XOAUTH2 relays: RELAY_AUTH and its default per profile, OAUTH_*, the Google
profile, the client secret from a file, and one line (exit 2) for what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import settings.sources as settings_module
from settings import RelayAuth, SettingsError, load_settings
from tasks.cli.flower import flower_environment
from tests.tasks.test_cli import assert_usage_error, run_mailroom
from workers.traffic.profiles import traffic

SECRET = "client-s3cret~file"
MICROSOFT: dict[str, Any] = {
    "delivery": "relay",
    "relay_host": "smtp.office365.com",
    "relay_profile": "office365",
    "relay_username": "notify@contoso.com",
    "oauth_tenant": "contoso.onmicrosoft.com",
    "oauth_client_id": "11111111-2222-3333-4444-555555555555",
    "oauth_client_secret": SECRET,
}


@pytest.fixture(autouse=True)
def no_default_secrets_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", tmp_path / "none", raising=False)
    monkeypatch.chdir(tmp_path)


def test_office365_with_a_client_id_defaults_to_xoauth2_with_exchanges_scope() -> None:
    settings = load_settings(**MICROSOFT)

    assert settings.relay_auth_mode is RelayAuth.XOAUTH2
    assert settings.oauth_scope_in_force == "https://outlook.office365.com/.default"
    assert settings.oauth_authority == "https://login.microsoftonline.com/{tenant}"
    assert SECRET not in repr(settings)
    # The profile keeps its limits.
    assert traffic(settings).max_recipients == 500


def test_basic_stays_the_default_without_oauth_and_can_be_chosen_with_it() -> None:
    basic = {k: v for k, v in MICROSOFT.items() if not k.startswith("oauth")}
    assert load_settings(**basic, relay_password="pw").relay_auth_mode is RelayAuth.BASIC
    chosen = load_settings(**MICROSOFT, relay_auth="basic", relay_password="pw")
    assert chosen.relay_auth_mode is RelayAuth.BASIC


def test_the_google_profile_names_its_relay_scope_and_limits(tmp_path: Path) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text("{}")
    settings = load_settings(
        delivery="relay",
        relay_profile="google",
        relay_username="notify@example.com",
        oauth_service_account_file=str(key_file),
    )

    assert (settings.relay_host, settings.relay_port) == ("smtp.gmail.com", 587)
    assert settings.relay_security.value == "starttls"
    assert settings.relay_auth_mode is RelayAuth.XOAUTH2
    assert settings.oauth_scope_in_force == "https://mail.google.com/"
    limits = traffic(settings)
    assert str(limits.rates["relay"]) == "2000/86400s"
    assert limits.max_recipients == 100


def test_the_client_secret_comes_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    values = {k: v for k, v in MICROSOFT.items() if k != "oauth_client_secret"}
    monkeypatch.setenv("MAILROOM_OAUTH_CLIENT_SECRET_FILE", str(tmp_path / "secret"))

    settings = load_settings(**values)

    assert settings.oauth_client_secret is not None
    assert settings.oauth_client_secret.get_secret_value() == SECRET


def test_the_client_secret_comes_from_the_secrets_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "mailroom_oauth_client_secret").write_text(SECRET)
    monkeypatch.setenv("MAILROOM_SECRETS_DIR", str(secrets))
    values = {k: v for k, v in MICROSOFT.items() if k != "oauth_client_secret"}

    settings = load_settings(**values)

    assert settings.oauth_client_secret is not None
    assert settings.oauth_client_secret.get_secret_value() == SECRET


def test_flower_never_gets_the_client_secret() -> None:
    environ = {
        "MAILROOM_OAUTH_CLIENT_SECRET": SECRET,
        "MAILROOM_OAUTH_CLIENT_SECRET_FILE": "/run/secrets/x",
        "PATH": "/usr/bin",
    }
    env = flower_environment(environ, load_settings(**MICROSOFT))

    assert not [name for name in env if "OAUTH" in name]
    assert SECRET not in "".join(env.values())


@pytest.mark.parametrize(
    ("drop", "add", "variable"),
    [
        ("relay_username", {}, "MAILROOM_RELAY_USERNAME"),
        ("oauth_client_id", {"relay_auth": "xoauth2"}, "MAILROOM_OAUTH_CLIENT_ID"),
        ("oauth_client_secret", {}, "MAILROOM_OAUTH_CLIENT_SECRET"),
        ("oauth_tenant", {}, "MAILROOM_OAUTH_TENANT"),
        ("relay_profile", {"relay_auth": "xoauth2", "oauth_authority": "http://x.test/t"},
         "MAILROOM_OAUTH_AUTHORITY"),
    ],
)  # fmt: skip
def test_what_xoauth2_lacks_is_one_line_naming_it(
    drop: str, add: dict[str, str], variable: str
) -> None:
    values = {**{k: v for k, v in MICROSOFT.items() if k != drop}, **add}

    with pytest.raises(SettingsError) as raised:
        load_settings(**values)

    assert raised.value.variable == variable
    assert "\n" not in str(raised.value)
    assert SECRET not in str(raised.value)


def test_google_without_a_key_file_is_one_line() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(
            delivery="relay",
            relay_profile="google",
            relay_username="a@b.test",
            relay_auth="xoauth2",
        )
    assert raised.value.variable == "MAILROOM_OAUTH_SERVICE_ACCOUNT_FILE"


def test_a_worker_with_incomplete_oauth_settings_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {f"MAILROOM_{k.upper()}": v for k, v in MICROSOFT.items() if k != "oauth_client_id"}
    env["MAILROOM_RELAY_AUTH"] = "xoauth2"

    run = run_mailroom("worker", env=env, cwd=tmp_path)

    assert_usage_error(run, "MAILROOM_OAUTH_CLIENT_ID", "xoauth2")
    assert SECRET not in run.stderr


def test_a_certificate_credential_replaces_the_secret_but_not_both(tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    pem.write_text("-----BEGIN PRIVATE KEY-----\n")
    without_secret = {k: v for k, v in MICROSOFT.items() if k != "oauth_client_secret"}

    settings = load_settings(**without_secret, oauth_client_certificate_file=str(pem))
    assert settings.relay_auth_mode is RelayAuth.XOAUTH2

    with pytest.raises(SettingsError) as raised:
        load_settings(**MICROSOFT, oauth_client_certificate_file=str(pem))
    assert raised.value.variable == "MAILROOM_OAUTH_CLIENT_CERTIFICATE_FILE"
    assert "not both" in raised.value.problem
    with pytest.raises(SettingsError) as missing:
        load_settings(**without_secret, oauth_client_certificate_file=str(tmp_path / "none.pem"))
    assert missing.value.variable == "MAILROOM_OAUTH_CLIENT_CERTIFICATE_FILE"
