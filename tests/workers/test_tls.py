"""TLS in the session: verified relays (STARTTLS and implicit), refused certificates, and
opportunistic STARTTLS to MX hosts, against real aiosmtpd sinks with trustme certificates.

A relay that cannot prove itself must receive neither the credentials nor the message.
"""

from __future__ import annotations

import pytest

from tests.support.smtp_sink import MakeSink, Sink
from tests.support.tls_material import TlsMaterial
from tests.workers.test_smtp_session import session
from workers.model.outcome import Deferred, classify
from workers.model.reply import Step
from workers.smtp.peer import Credentials
from workers.smtp.session import SessionResult
from workers.smtp.tls_policy import opportunistic_policy, relay_policy

ACCOUNT = Credentials("svc-mailroom", "s3cret-pw")


def commands(result: SessionResult) -> list[tuple[str, int]]:
    return [(step.command, step.reply.code) for step in result.steps]


def assert_nothing_sent(sink: Sink) -> None:
    assert sink.auth_attempts == []
    assert all(record.mail_from == [] for record in sink.sessions)
    assert sink.received == []


async def relay_session(
    sink: Sink, tls: TlsMaterial, security: str = "starttls", ca_file: bool = True
) -> SessionResult:
    """One session to `sink` as the relay "relay.test", with the service account."""
    policy = relay_policy(security, str(tls.ca_file) if ca_file else None)
    return await session(
        sink.port, ["a@x.test"], host="relay.test", tls=policy, credentials=ACCOUNT
    )


async def test_starttls_relay_verifies_then_authenticates_then_sends(
    make_sink: MakeSink, tls: TlsMaterial
) -> None:
    sink = make_sink(
        starttls_context=tls.server_context("relay.test"),
        require_starttls=True,
        auth=(ACCOUNT.username, ACCOUNT.password),
    )
    result = await relay_session(sink, tls)

    assert commands(result)[:5] == [
        ("connect", 220),
        ("EHLO", 250),
        ("STARTTLS", 220),
        ("EHLO", 250),
        ("AUTH PLAIN", 235),
    ]
    assert result.replies["a@x.test"].code == 250
    assert result.tls
    [attempt] = sink.auth_attempts
    assert (attempt.username, attempt.password, attempt.tls) == ("svc-mailroom", "s3cret-pw", True)
    [received] = sink.messages
    assert received.tls


async def test_implicit_tls_relay(make_sink: MakeSink, tls: TlsMaterial) -> None:
    sink = make_sink(
        implicit_tls_context=tls.server_context("relay.test"),
        auth=(ACCOUNT.username, ACCOUNT.password),
    )
    result = await relay_session(sink, tls, "tls")

    assert [c for c, _ in commands(result)][:3] == ["connect", "EHLO", "AUTH PLAIN"]
    assert result.replies["a@x.test"].code == 250
    assert sink.sessions[0].tls
    assert sink.auth_attempts[0].tls
    assert sink.messages[0].tls


async def test_relay_without_starttls_gets_nothing_and_defers(
    make_sink: MakeSink, tls: TlsMaterial
) -> None:
    sink = make_sink(auth=(ACCOUNT.username, ACCOUNT.password), auth_require_tls=False)
    result = await relay_session(sink, tls)

    reply = result.replies["a@x.test"]
    assert (reply.code, reply.enhanced, reply.step) == (451, "4.7.4", Step.OPEN_SESSION)
    assert "does not offer STARTTLS" in reply.text
    assert isinstance(classify("a@x.test", reply), Deferred)
    assert_nothing_sent(sink)


@pytest.mark.parametrize("security", ["starttls", "tls"])
@pytest.mark.parametrize(
    ("certificate", "why"),
    [
        ("self_signed", "self-signed certificate"),
        ("wrong_name", "Hostname mismatch"),
        ("expired", "certificate has expired"),
    ],
)
async def test_untrusted_relay_certificate_gets_nothing_and_defers(
    make_sink: MakeSink, tls: TlsMaterial, security: str, certificate: str, why: str
) -> None:
    if certificate == "self_signed":
        context = tls.self_signed_context("relay.test")
    elif certificate == "wrong_name":
        context = tls.wrong_name_context()
    else:
        context = tls.expired_context("relay.test")
    options = {"starttls_context": context} if security == "starttls" else {}
    implicit = {"implicit_tls_context": context} if security == "tls" else {}
    sink = make_sink(auth=(ACCOUNT.username, ACCOUNT.password), **options, **implicit)  # type: ignore[arg-type]
    result = await relay_session(sink, tls, security)

    reply = result.replies["a@x.test"]
    assert (reply.code, reply.enhanced, reply.step) == (421, "4.7.5", Step.OPEN_SESSION)
    assert why in reply.text
    assert isinstance(classify("a@x.test", reply), Deferred)
    assert not result.tls_failed  # required TLS: no plaintext retry
    assert_nothing_sent(sink)


async def test_relay_trusts_only_public_cas_unless_told(
    make_sink: MakeSink, tls: TlsMaterial
) -> None:
    sink = make_sink(starttls_context=tls.server_context("relay.test"))
    result = await session(
        sink.port, ["a@x.test"], host="relay.test", tls=relay_policy("starttls", None)
    )

    reply = result.replies["a@x.test"]
    assert reply.enhanced == "4.7.5"
    assert "unable to get local issuer certificate" in reply.text
    assert_nothing_sent(sink)


async def test_refused_login_defers_and_says_why(make_sink: MakeSink, tls: TlsMaterial) -> None:
    sink = make_sink(
        starttls_context=tls.server_context("relay.test"), auth=("svc-mailroom", "other")
    )
    result = await relay_session(sink, tls)

    reply = result.replies["a@x.test"]
    assert (reply.code, reply.enhanced) == (451, "4.7.0")
    assert "authentication as svc-mailroom failed: 535" in reply.text
    assert "s3cret-pw" not in repr(result)
    assert sink.received == []


async def test_mx_starttls_is_used_when_offered_even_unverified(
    make_sink: MakeSink, tls: TlsMaterial
) -> None:
    sink = make_sink(starttls_context=tls.self_signed_context("mx1.mx.test"))
    result = await session(sink.port, ["a@x.test"], host="mx1.mx.test", tls=opportunistic_policy())

    assert ("STARTTLS", 220) in commands(result)
    assert result.tls
    assert sink.messages[0].tls


async def test_mx_without_starttls_sends_in_plaintext(make_sink: MakeSink) -> None:
    sink = make_sink()
    result = await session(sink.port, ["a@x.test"], host="mx1.mx.test", tls=opportunistic_policy())

    assert "STARTTLS" not in [c for c, _ in commands(result)]
    assert not result.tls
    assert len(sink.messages) == 1


async def test_mx_failed_handshake_is_flagged_for_a_plaintext_retry(make_sink: MakeSink) -> None:
    sink = make_sink(broken_starttls=True)
    result = await session(sink.port, ["a@x.test"], host="mx1.mx.test", tls=opportunistic_policy())

    assert result.tls_failed
    assert result.replies["a@x.test"].enhanced == "4.7.5"
    assert sink.received == []
