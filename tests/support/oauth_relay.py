"""The `oauth` fixture: the test token endpoint with one Microsoft application and one Google
service account, and a relay (`localhost` on 127.0.0.1, STARTTLS) that accepts only the tokens the
endpoint issued, refuses Basic AUTH as Exchange Online does once it is off (550 5.7.30), and the
settings of a deployment using them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.oauth_server import TENANT, TokenEndpoint
from tests.support.smtp_sink import MakeSink, Sink
from tests.support.tls_material import TlsMaterial


@dataclass(frozen=True)
class OAuthSetup:
    """A running token endpoint with one Microsoft application and one Google service account,
    and a relay (`localhost` on 127.0.0.1, STARTTLS) that accepts only the tokens it issued."""

    endpoint: TokenEndpoint
    relay: Sink
    ca_file: Path
    key_file: Path

    def microsoft_settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings values of a Microsoft 365 XOAUTH2 relay deployment on these servers."""
        return {
            "delivery": "relay",
            "relay_host": "localhost",
            "relay_port": self.relay.port,
            "relay_profile": "office365",
            "relay_username": MAILBOX,
            "oauth_tenant": TENANT,
            "oauth_client_id": CLIENT_ID,
            "oauth_client_secret": CLIENT_SECRET,
            "oauth_authority": self.endpoint.authority,
            "tls_ca_file": str(self.ca_file),
            **overrides,
        }

    def google_settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings values of a Google Workspace XOAUTH2 relay deployment on these servers."""
        return {
            "delivery": "relay",
            "relay_host": "localhost",
            "relay_port": self.relay.port,
            "relay_profile": "google",
            "relay_username": MAILBOX,
            "oauth_service_account_file": str(self.key_file),
            "tls_ca_file": str(self.ca_file),
            # The profile's pace (2,000 a day) would make a test wait; the operator's wins.
            "rate_limits": '{"relay": "100/s"}',
            **overrides,
        }


MAILBOX = "notifications@contoso.test"
CLIENT_ID = "6f1c0b2e-app"
CLIENT_SECRET = "client-s3cret-Qx7~vV9"
SERVICE_ACCOUNT = "mailroom@contoso-mail.iam.test"


@pytest.fixture
def oauth(tls: TlsMaterial, make_sink: MakeSink, tmp_path: Path) -> Iterator[OAuthSetup]:
    """The token endpoint and its relay, for one test."""
    with TokenEndpoint(tls) as endpoint:
        endpoint.add_client(CLIENT_ID, CLIENT_SECRET)
        key_file = endpoint.service_account_file(tmp_path, SERVICE_ACCOUNT)
        relay = make_sink(
            "127.0.0.1",
            starttls_context=tls.server_context("localhost"),
            require_starttls=True,
            xoauth2=endpoint.check,
            basic_reply="550 5.7.30 Basic authentication is not supported for Client Submission",
        )
        yield OAuthSetup(endpoint, relay, tls.ca_file, key_file)
