"""`mailroom check` for an XOAUTH2 relay, through the real CLI: the token step before AUTH, its
failures with their fix, and never the token or the client secret on the screen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.oauth_relay import CLIENT_ID, CLIENT_SECRET, MAILBOX, OAuthSetup
from tests.tasks.test_cli import run_mailroom
from tests.tasks.test_cli_check import _env, redis_url  # noqa: F401 (the module's Redis)


def _oauth_env(url: str, values: dict[str, Any]) -> dict[str, str]:
    return _env(url, **{f"MAILROOM_{k.upper()}": str(v) for k, v in values.items()})


def _shown_secrets(oauth: OAuthSetup, text: str) -> list[str]:
    secrets = [CLIENT_SECRET, *(issued.token for issued in oauth.endpoint.issued())]
    return [secret for secret in secrets if secret in text]


def test_check_shows_the_token_step_before_auth(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    oauth: OAuthSetup,
) -> None:
    env = _oauth_env(redis_url, oauth.microsoft_settings())

    run = run_mailroom("check", env=env, cwd=tmp_path)

    assert run.status == 0, run
    lines = run.stdout.splitlines()
    [token] = [line for line in lines if line.startswith("token ")]
    assert "ok" in token
    assert "token acquired, expires" in token
    assert "scopes SMTP.SendAsApp" in token
    assert MAILBOX in token
    auth = next(i for i, line in enumerate(lines) if "AUTH XOAUTH2" in line)
    assert lines.index(token) < auth
    assert lines[-1] == "OK"
    assert _shown_secrets(oauth, run.stdout + run.stderr) == []
    assert oauth.relay.auth_attempts[0].username == MAILBOX

    as_json = json.loads(run_mailroom("check", "--json", env=env, cwd=tmp_path).stdout)
    assert as_json["token"]["ok"] is True
    assert as_json["token"]["scopes"] == ["SMTP.SendAsApp"]


def test_a_refused_secret_fails_at_the_token_step_with_the_fix(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    oauth: OAuthSetup,
) -> None:
    oauth.endpoint.revoke(CLIENT_ID)
    env = _oauth_env(redis_url, oauth.microsoft_settings())

    run = run_mailroom("check", env=env, cwd=tmp_path)

    assert run.status == 1, run
    last = run.stdout.splitlines()[-1]
    assert last.startswith("FAILED at token: invalid_client: AADSTS7000215")
    assert "to fix: OAUTH_CLIENT_SECRET" in last
    assert oauth.relay.sessions == []
    assert _shown_secrets(oauth, run.stdout + run.stderr) == []


def test_a_token_the_relay_refuses_names_the_delegation_fix(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    oauth: OAuthSetup,
) -> None:
    oauth.endpoint.refuse_at_relay()
    env = _oauth_env(redis_url, oauth.google_settings())

    run = run_mailroom("check", env=env, cwd=tmp_path)

    assert run.status == 1, run
    [token] = [line for line in run.stdout.splitlines() if line.startswith("token ")]
    assert "scopes https://mail.google.com/" in token
    last = run.stdout.splitlines()[-1]
    assert last.startswith("FAILED at open_session: 451 4.7.0 authentication as")
    assert "535 5.7.3" in last
    assert "to fix: authorize the service account" in last
    assert _shown_secrets(oauth, run.stdout + run.stderr) == []


def test_basic_auth_turned_off_names_the_move_to_xoauth2(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    oauth: OAuthSetup,
) -> None:
    values = oauth.microsoft_settings(relay_auth="basic", relay_password="old-password-1")
    run = run_mailroom("check", env=_oauth_env(redis_url, values), cwd=tmp_path)

    assert run.status == 1, run
    assert [line for line in run.stdout.splitlines() if line.startswith("token ")] == []
    last = run.stdout.splitlines()[-1]
    assert "550 5.7.30" in last
    assert "to fix: Basic AUTH is turned off" in last
    assert "old-password-1" not in run.stdout + run.stderr
