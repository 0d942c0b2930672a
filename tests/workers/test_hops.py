"""Which server a destination goes to (workers/delivery/hops.py), from the worker's own settings."""

from __future__ import annotations

from settings import Settings
from workers.delivery.hops import Hops, Relay
from workers.delivery.setup import agent_config
from workers.model.reply import Reply
from workers.smtp.tls_policy import TlsMode

ROUTES = (
    '{"catch.test": "smtp://127.0.0.1:1025?tls=none", ".corp.test": "smtp://mail.corp.test",'
    ' "partner.test": "relay", "direct.test": "mx"}'
)


def hops(**values: str) -> Hops:
    config = agent_config(Settings(helo_name="client.mailroom.test", **values))
    assert config.hops is not None
    return config.hops


def test_domains_go_where_the_workers_routes_send_them() -> None:
    table = hops(routes=ROUTES, relay_host="smtp.relay.test", delivery="relay")

    catcher = table.hop("catch.test")
    assert isinstance(catcher, Relay)
    assert (catcher.host, catcher.port, catcher.tls, catcher.credentials) == (
        "127.0.0.1", 1025, None, None,
    )  # fmt: skip
    corp = table.hop("a.corp.test")
    assert isinstance(corp, Relay)
    assert (corp.host, corp.port) == ("mail.corp.test", 25)
    assert corp.tls is not None
    assert corp.tls.mode is TlsMode.OPPORTUNISTIC
    relay = table.hop("partner.test")
    assert isinstance(relay, Relay)
    assert relay.host == "smtp.relay.test"
    assert relay.tls is not None
    assert relay.tls.mode is TlsMode.STARTTLS
    assert table.hop("direct.test") is None  # its MX hosts
    assert table.hop("other.test") is relay  # DELIVERY=relay for the rest
    assert table.hop("relay") is relay


def test_a_fixed_destination_goes_to_its_server_even_when_no_route_names_it() -> None:
    table = hops(routes='{"catch.test": "smtp://127.0.0.1:1025?tls=none"}')

    named = table.hop("smtp://127.0.0.1:1025")
    assert isinstance(named, Relay)
    assert named.tls is None  # the route's tls=none
    # Queued under routes that have changed since: that server still, opportunistic TLS.
    stale = table.hop("smtp://mail.old.test:2525")
    assert isinstance(stale, Relay)
    assert (stale.host, stale.port) == ("mail.old.test", 2525)
    assert stale.tls is not None
    assert stale.tls.mode is TlsMode.OPPORTUNISTIC
    assert table.hop("other.test") is None  # DELIVERY=mx


def test_mail_queued_to_the_relay_waits_when_this_worker_has_none() -> None:
    reply = hops().hop("relay")

    assert isinstance(reply, Reply)
    assert (reply.code, reply.enhanced) == (451, "4.3.5")
    assert "MAILROOM_RELAY_HOST" in reply.text


def test_implicit_tls_routes_are_verified() -> None:
    server = hops(routes='{"x.test": "smtp://mail.x.test:465?tls=tls"}').hop("x.test")

    assert isinstance(server, Relay)
    assert server.tls is not None
    assert server.tls.mode is TlsMode.IMPLICIT
    assert server.tls.required
