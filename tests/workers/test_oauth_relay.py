"""XOAUTH2 relays through the delivery agent: a real token endpoint (HTTPS, loopback), a real
relay that accepts only the tokens it issued, a real Redis for the token cache and the hold."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from settings import Settings
from tests.support.oauth_relay import (
    CLIENT_ID,
    CLIENT_SECRET,
    MAILBOX,
    SERVICE_ACCOUNT,
    OAuthSetup,
)
from tests.support.redis_server import RedisServer
from tests.workers.test_smtp_session import message
from workers.delivery.agent import DeliveryAgent
from workers.delivery.relay_setup import relay_access
from workers.model.outcome import Deferred, Delivered
from workers.model.reply import Step
from workers.oauth.cache import KEY_PREFIX, METRICS_KEY
from workers.traffic.relay_hold import HOLD_KEY, PROBE_KEY, RelayHolds

Agents = Callable[..., DeliveryAgent]
_TIMEOUTS = {"connect_timeout": 1, "command_timeout": 3, "data_timeout": 3, "session_timeout": 10}


@pytest.fixture
async def agents(redis_server: RedisServer, redis_client: redis.Redis) -> AsyncIterator[Agents]:
    """Delivery agents as worker processes build them, each with its own Redis client."""
    made: list[DeliveryAgent] = []

    def make(values: dict[str, Any]) -> DeliveryAgent:
        given = {k: v for k, v in values.items() if v is not None}
        settings = Settings(helo_name="client.mailroom.test", **_TIMEOUTS, **given)
        client = redis_server.client()
        agent = DeliveryAgent.from_settings(settings, access=relay_access(settings, client))
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.close()


async def test_microsoft_token_delivers_and_the_relay_sees_the_mailbox(
    oauth: OAuthSetup, agents: Agents, redis_client: redis.Redis
) -> None:
    agent = agents(oauth.microsoft_settings())

    report = await agent.deliver(message(), "relay", ["a@one.example", "b@two.example"])

    assert [type(o) for o in report.outcomes] == [Delivered, Delivered]
    [attempt] = oauth.relay.auth_attempts
    assert (attempt.mechanism, attempt.username, attempt.tls) == ("XOAUTH2", MAILBOX, True)
    [issued] = oauth.endpoint.issued()
    assert attempt.password == issued.token
    assert [s.command for s in report.attempts[0].steps if s.command.startswith("AUTH")] == [
        "AUTH XOAUTH2"
    ]
    # The token is in Redis only sealed, and counted.
    [key] = redis_client.keys(KEY_PREFIX + "*")
    sealed = redis_client.get(key)
    assert isinstance(sealed, bytes)
    assert issued.token.encode() not in sealed
    assert redis_client.hgetall(METRICS_KEY) == {b"microsoft|issued": b"1"}
    assert issued.token not in repr(report)


async def test_google_service_account_delivers_as_the_delegated_user(
    oauth: OAuthSetup, agents: Agents
) -> None:
    agent = agents(oauth.google_settings())

    report = await agent.deliver(message(), "relay", ["a@one.example"])

    assert [type(o) for o in report.outcomes] == [Delivered]
    [attempt] = oauth.relay.auth_attempts
    assert (attempt.mechanism, attempt.username) == ("XOAUTH2", MAILBOX)
    [issued] = oauth.endpoint.issued()
    assert (issued.client, issued.subject) == (SERVICE_ACCOUNT, MAILBOX)
    [post] = [r for r in oauth.endpoint.requests if r.method == "POST"]
    assert post.form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"


async def test_one_token_serves_many_messages_and_every_worker(
    oauth: OAuthSetup, agents: Agents
) -> None:
    first, second = agents(oauth.microsoft_settings()), agents(oauth.microsoft_settings())

    for n in range(5):
        for agent in (first, second):
            report = await agent.deliver(message(), "relay", [f"r{n}@one.example"])
            assert isinstance(report.outcomes[0], Delivered)

    assert oauth.endpoint.token_requests() == 1
    assert len(oauth.relay.messages) == 10


async def test_a_token_near_its_expiry_is_replaced_before_use(
    oauth: OAuthSetup, agents: Agents
) -> None:
    # Tokens that live 4 minutes are inside the 5-minute margin from the start.
    oauth.endpoint.set_lifetime(240)
    agent = agents(oauth.microsoft_settings(connection_reuse=False))

    for n in range(3):
        report = await agent.deliver(message(), "relay", [f"r{n}@one.example"])
        assert isinstance(report.outcomes[0], Delivered)

    assert oauth.endpoint.token_requests() == 3
    tokens = [a.password for a in oauth.relay.auth_attempts]
    assert len(set(tokens)) == 3


async def test_a_token_the_relay_refuses_is_replaced_once_and_the_delivery_goes(
    oauth: OAuthSetup, agents: Agents, redis_client: redis.Redis
) -> None:
    agent = agents(oauth.microsoft_settings(connection_reuse=False))
    await agent.deliver(message(), "relay", ["first@one.example"])
    oauth.endpoint.forget_tokens()  # the relay no longer accepts the cached token

    report = await agent.deliver(message(), "relay", ["second@one.example"])

    assert isinstance(report.outcomes[0], Delivered)
    replies = [a.reply for a in oauth.relay.auth_attempts]
    assert [r[:9] if r else r for r in replies] == ["235 2.7.0", "535 5.7.3", "235 2.7.0"]
    assert oauth.endpoint.token_requests() == 2
    assert redis_client.exists(HOLD_KEY) == 0


async def test_a_revoked_secret_holds_the_relay_until_it_works_again(
    oauth: OAuthSetup, agents: Agents, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    agent = agents(oauth.microsoft_settings(connection_reuse=False, relay_probe_interval=0.2))
    await agent.deliver(message(), "relay", ["first@one.example"])
    oauth.endpoint.revoke(CLIENT_ID)

    with caplog.at_level(logging.INFO):
        held = await agent.deliver(message(), "relay", ["second@one.example"])

    [outcome] = held.outcomes
    assert isinstance(outcome, Deferred)
    assert outcome.retry_after == pytest.approx(0.2)
    assert "relay held" in outcome.reply.text
    assert "AADSTS7000215" in outcome.reply.text
    hold = RelayHolds(redis_client).current()
    assert hold is not None
    assert "OAUTH_CLIENT_SECRET" in hold.hint
    [line] = [r.getMessage() for r in caplog.records if "relay held" in r.getMessage()]
    assert "to fix: OAUTH_CLIENT_SECRET" in line
    # While held, deliveries wait at the gate, with no attempt, until the next probe.
    waiting = await agent.deliver(message(), "relay", ["third@one.example"])
    assert waiting.attempts == ()
    assert waiting.outcomes[0].reply.step is Step.GATE
    requests_while_held = oauth.endpoint.token_requests()

    oauth.endpoint.restore(CLIENT_ID)
    redis_client.delete(PROBE_KEY)  # the probe interval has passed
    await _settle_hold_view()
    resumed = await agent.deliver(message(), "relay", ["third@one.example"])

    assert isinstance(resumed.outcomes[0], Delivered)
    assert redis_client.exists(HOLD_KEY) == 0
    assert oauth.endpoint.token_requests() == requests_while_held + 1
    for record in caplog.records:
        assert CLIENT_SECRET not in record.getMessage()
        for issued in oauth.endpoint.issued():
            assert issued.token not in record.getMessage()


async def test_basic_auth_turned_off_holds_the_relay(
    oauth: OAuthSetup, agents: Agents, redis_client: redis.Redis
) -> None:
    settings = oauth.microsoft_settings(
        relay_auth="basic", relay_password="old-password", relay_probe_interval=30
    )
    agent = agents(settings)

    report = await agent.deliver(message(), "relay", ["a@one.example"])

    [outcome] = report.outcomes
    assert isinstance(outcome, Deferred)
    assert "550 5.7.30" in outcome.reply.text
    assert outcome.retry_after == 30
    hold = RelayHolds(redis_client).current()
    assert hold is not None
    assert "RELAY_AUTH=xoauth2" in hold.hint
    assert oauth.relay.auth_attempts[0].mechanism in {"PLAIN", "LOGIN"}


async def test_google_refused_delegation_holds_with_the_fix(
    oauth: OAuthSetup, agents: Agents, redis_client: redis.Redis
) -> None:
    agent = agents(oauth.google_settings(oauth_scope="https://www.googleapis.com/auth/gmail.send"))

    report = await agent.deliver(message(), "relay", ["a@one.example"])

    assert isinstance(report.outcomes[0], Deferred)
    assert report.attempts == ()
    hold = RelayHolds(redis_client).current()
    assert hold is not None
    assert "unauthorized_client" in hold.reason
    assert "domain-wide delegation" in hold.hint
    assert oauth.relay.sessions == []


async def _settle_hold_view() -> None:
    """Let the agent's view of the hold record (kept for HOLD_RECHECK) go stale."""
    import asyncio

    from workers.delivery.relay_access import HOLD_RECHECK

    await asyncio.sleep(HOLD_RECHECK)


def _sasl(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


async def test_a_certificate_credential_instead_of_the_secret(
    oauth: OAuthSetup, agents: Agents, tmp_path: Path
) -> None:
    certificate = oauth.endpoint.certificate_file(tmp_path, CLIENT_ID)
    values = oauth.microsoft_settings(oauth_client_secret=None)
    agent = agents({**values, "oauth_client_certificate_file": str(certificate)})

    report = await agent.deliver(message(), "relay", ["a@one.example"])

    assert isinstance(report.outcomes[0], Delivered)
    [post] = [r for r in oauth.endpoint.requests if r.method == "POST"]
    assert "client_secret" not in post.form
    assert post.form["client_assertion_type"].endswith("client-assertion-type:jwt-bearer")
    assert oauth.relay.auth_attempts[0].username == MAILBOX


async def test_a_certificate_the_application_does_not_know_holds_with_the_fix(
    oauth: OAuthSetup, agents: Agents, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Registered for another application: the assertion's signature is not CLIENT_ID's.
    certificate = oauth.endpoint.certificate_file(tmp_path, "some-other-app")
    values = oauth.microsoft_settings(oauth_client_secret=None)
    agent = agents({**values, "oauth_client_certificate_file": str(certificate)})

    report = await agent.deliver(message(), "relay", ["a@one.example"])

    assert isinstance(report.outcomes[0], Deferred)
    hold = RelayHolds(redis_client).current()
    assert hold is not None
    assert "AADSTS700027" in hold.reason
    assert "upload it" in hold.hint


async def test_a_route_to_the_relay_logs_in_with_the_token_too(
    oauth: OAuthSetup, agents: Agents
) -> None:
    # MX delivery by default; one domain routed to the relay: its mail, queued under `relay` by a
    # producer that knows the route or under its own name by one that does not, logs in the same.
    settings = oauth.microsoft_settings(delivery="mx", routes='{"corp.example": "relay"}')
    agent = agents(settings)

    queued_to_relay = await agent.deliver(message(), "relay", ["a@corp.example"])
    queued_to_domain = await agent.deliver(message(), "corp.example", ["b@corp.example"])

    assert [type(o) for o in queued_to_relay.outcomes] == [Delivered]
    assert [type(o) for o in queued_to_domain.outcomes] == [Delivered]
    assert [(a.mechanism, a.username) for a in oauth.relay.auth_attempts] == [
        ("XOAUTH2", MAILBOX),
        ("XOAUTH2", MAILBOX),
    ]
    assert len(oauth.endpoint.issued()) == 1
