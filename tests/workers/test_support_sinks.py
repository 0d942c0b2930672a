"""The test SMTP servers themselves, driven by the stdlib's smtplib (not the client under test).

Each scripted behaviour of tests/support/smtp_sink.py, the TLS material and the raw servers is
shown once with a plain client, so a failing delivery test can trust its servers.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from cryptography import x509

from tests.support.raw_servers import MakeGreetingServer, MakeRefusedPort, MakeSilentServer
from tests.support.smtp_sink import ACCEPT_DATA, MakeSink, Sink
from tests.support.tls_material import TlsMaterial

CLIENT_NAME = "client.test"
SENDER = "app@sender.test"
MESSAGE = (
    b"From: app@sender.test\r\nTo: ok@x.test\r\nSubject: hi\r\n"
    b"Message-ID: <m1@sender.test>\r\n\r\nbody line\r\n.starts with a dot\r\n"
)


@contextmanager
def client(sink: Sink, timeout: float = 5.0) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP(sink.host, sink.port, local_hostname=CLIENT_NAME, timeout=timeout) as smtp:
        yield smtp


def plain_auth(username: str, password: str) -> str:
    return base64.b64encode(f"\0{username}\0{password}".encode()).decode()


def test_sinks_on_two_loopback_addresses_record_separately(make_sink: MakeSink) -> None:
    first, second = make_sink("127.0.0.2"), make_sink("127.0.0.3")
    for sink in (first, second):
        with client(sink) as smtp:
            smtp.sendmail(SENDER, [f"ok@{sink.host}.test"], MESSAGE)
    assert [m.rcpt_tos for m in first.messages] == [("ok@127.0.0.2.test",)]
    assert [m.rcpt_tos for m in second.messages] == [("ok@127.0.0.3.test",)]
    assert first.sessions[0].peer[0] == "127.0.0.1"
    assert [s.number for s in first.sessions] == [1]  # the controller's own probe is not counted


def test_sink_on_ipv6_loopback(make_sink: MakeSink) -> None:
    sink = make_sink("::1")
    with client(sink) as smtp:
        smtp.sendmail(SENDER, ["ok@x.test"], MESSAGE)
    assert sink.sessions[0].peer[0] == "::1"
    assert len(sink.messages) == 1


def test_accepted_message_records_envelope_content_and_session(make_sink: MakeSink) -> None:
    sink = make_sink()
    with client(sink) as smtp:
        refused = smtp.sendmail(
            SENDER, ["ok@x.test", "250-fine@x.test"], MESSAGE, mail_options=["BODY=8BITMIME"]
        )
    assert refused == {}
    [message] = sink.messages
    assert message.mail_from == SENDER
    assert message.rcpt_tos == ("ok@x.test", "250-fine@x.test")
    assert "BODY=8BITMIME" in message.mail_options
    assert f"SIZE={len(MESSAGE)}" in message.mail_options
    assert message.content == MESSAGE  # dot-stuffed by smtplib, unstuffed by the sink
    assert message.message_id == "<m1@sender.test>"
    assert message.reply == ACCEPT_DATA
    [session] = sink.sessions
    assert (session.helo, session.ehlo, session.tls) == (CLIENT_NAME, True, False)
    assert session.commands == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert session.mail_from[0].address == SENDER
    assert [r.reply for r in session.rcpt_to] == ["250 2.1.5 recipient ok"] * 2
    assert sink.wait_until(lambda: sink.sessions[0].closed)


@pytest.mark.parametrize(
    ("recipient", "code", "text"),
    [
        ("ok@x.test", 250, b"2.1.5 recipient ok"),
        ("anyone@x.test", 250, b"2.1.5 recipient ok"),
        ("250-ok@x.test", 250, b"2.1.5 recipient ok"),
        ("451-greylist@x.test", 451, b"4.7.1 greylisted"),
        ("550-unknown@x.test", 550, b"5.1.1 unknown user"),
        ("452-data@x.test", 250, b"2.1.5 recipient ok"),
        ("552-data@x.test", 250, b"2.1.5 recipient ok"),
    ],
)
def test_rcpt_reply_is_scripted_by_local_part(
    make_sink: MakeSink, recipient: str, code: int, text: bytes
) -> None:
    sink = make_sink()
    with client(sink) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        assert smtp.rcpt(recipient) == (code, text)
    [rcpt] = sink.sessions[0].rcpt_to
    assert (rcpt.address, rcpt.reply) == (recipient, f"{code} {text.decode()}")


def test_421_disconnect_drops_the_connection_at_rcpt(make_sink: MakeSink) -> None:
    sink = make_sink()
    with client(sink) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.rcpt("421-disconnect@x.test")
    assert sink.wait_until(lambda: sink.sessions[0].closed)
    [rcpt] = sink.sessions[0].rcpt_to
    assert rcpt.reply is None


@pytest.mark.parametrize(
    ("recipient", "code", "text"),
    [
        ("452-data@x.test", 452, b"4.3.1 insufficient system storage"),
        ("552-data@x.test", 552, b"5.3.4 message too big for system"),
    ],
)
def test_final_dot_reply_is_scripted(
    make_sink: MakeSink, recipient: str, code: int, text: bytes
) -> None:
    sink = make_sink()
    with client(sink) as smtp, pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.sendmail(SENDER, ["ok@x.test", recipient], MESSAGE)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (code, text)
    assert sink.messages == []
    [received] = sink.received
    assert received.reply == f"{code} {text.decode()}"
    assert not received.accepted


def test_disconnect_data_drops_after_receiving_the_message(make_sink: MakeSink) -> None:
    sink = make_sink()
    with client(sink) as smtp, pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.sendmail(SENDER, ["disconnect-data@x.test"], MESSAGE)
    [received] = sink.received
    assert received.reply is None
    assert received.message_id == "<m1@sender.test>"
    assert sink.messages == []


def test_slow_rcpt_answers_late(make_sink: MakeSink) -> None:
    sink = make_sink(slow_seconds=30)
    with client(sink, timeout=0.3) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            smtp.rcpt("slow-rcpt@x.test")
        smtp.close()  # a timed-out smtplib connection cannot QUIT


def test_slow_rcpt_then_answers_250(make_sink: MakeSink) -> None:
    sink = make_sink(slow_seconds=0.2)
    with client(sink) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        assert smtp.rcpt("slow-rcpt@x.test")[0] == 250


def test_slow_data_answers_the_final_dot_late(make_sink: MakeSink) -> None:
    sink = make_sink(slow_seconds=30)
    with client(sink, timeout=0.3) as smtp:
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            smtp.sendmail(SENDER, ["ok@x.test", "slow-data@x.test"], MESSAGE)
        smtp.close()
    assert sink.wait_until(lambda: sink.sessions[0].closed)
    # The whole message arrived, but the client gave up before the reply.
    [message] = sink.received
    assert message.reply is None
    assert sink.messages == []


@pytest.mark.parametrize("reply", ["451 4.3.0 try later", "550 5.7.1 sender refused"])
def test_mail_from_reply_is_scripted(make_sink: MakeSink, reply: str) -> None:
    sink = make_sink(mail_from_reply=reply)
    with client(sink) as smtp, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.sendmail(SENDER, ["ok@x.test"], MESSAGE)
    assert f"{refused.value.smtp_code} {refused.value.smtp_error.decode()}" == reply
    [mail] = sink.sessions[0].mail_from
    assert (mail.address, mail.reply) == (SENDER, reply)


def test_size_limit_is_announced_and_enforced(make_sink: MakeSink) -> None:
    sink = make_sink(data_size_limit=100)
    with client(sink) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features["size"] == "100"
        code, _ = smtp.mail(SENDER, ["SIZE=101"])
        assert code == 552
    unlimited = make_sink(data_size_limit=None)
    with client(unlimited) as smtp:
        smtp.ehlo()
        assert "size" not in smtp.esmtp_features


def test_smtputf8_and_8bitmime_can_be_withheld(make_sink: MakeSink) -> None:
    full = make_sink()
    with client(full) as smtp:
        smtp.ehlo()
        assert {"smtputf8", "8bitmime"} <= set(smtp.esmtp_features)
    plain = make_sink(smtputf8=False, eightbitmime=False)
    with client(plain) as smtp:
        smtp.ehlo()
        assert not {"smtputf8", "8bitmime"} & set(smtp.esmtp_features)
        assert smtp.mail(SENDER, ["BODY=8BITMIME"])[0] == 555
        # smtplib will not send SMTPUTF8 to a server that does not offer it; say it by hand.
        assert smtp.docmd("MAIL", f"FROM:<{SENDER}> SMTPUTF8")[0] == 501


def test_smtputf8_mail_option_is_recorded(make_sink: MakeSink) -> None:
    sink = make_sink()
    with client(sink) as smtp:
        smtp.sendmail("pépé@sender.test", ["ok@x.test"], MESSAGE, mail_options=["SMTPUTF8"])
    [message] = sink.messages
    assert message.mail_from == "pépé@sender.test"
    assert "SMTPUTF8" in message.mail_options


def test_refused_ehlo_makes_the_client_fall_back_to_helo(make_sink: MakeSink) -> None:
    sink = make_sink(refuse_ehlo=True)
    with client(sink) as smtp:
        assert smtp.ehlo()[0] == 502
        assert smtp.helo()[0] == 250
        smtp.sendmail(SENDER, ["ok@x.test"], MESSAGE)
    [session] = sink.sessions
    assert session.commands[:2] == ["EHLO", "HELO"]
    assert (session.helo, session.ehlo) == (CLIENT_NAME, False)
    assert len(sink.messages) == 1


def test_starttls_verifies_against_the_test_ca(make_sink: MakeSink, tls: TlsMaterial) -> None:
    sink = make_sink(starttls_context=tls.server_context("relay.test", "127.0.0.2"))
    with client(sink) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        smtp.starttls(context=tls.client_context())
        smtp.sendmail(SENDER, ["ok@x.test"], MESSAGE)
    [session] = sink.sessions
    assert session.tls
    assert session.commands[:3] == ["EHLO", "STARTTLS", "EHLO"]
    assert sink.messages[0].tls


@pytest.mark.parametrize("bad", ["wrong_name", "self_signed", "expired"])
def test_bad_certificates_fail_verification_and_are_recorded(
    make_sink: MakeSink, tls: TlsMaterial, bad: str
) -> None:
    contexts: dict[str, Callable[[], ssl.SSLContext]] = {
        "wrong_name": tls.wrong_name_context,
        "self_signed": lambda: tls.self_signed_context("127.0.0.2"),
        "expired": lambda: tls.expired_context("127.0.0.2"),
    }
    sink = make_sink(starttls_context=contexts[bad](), auth=("user", "secret"))
    with client(sink) as smtp:
        smtp.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError):
            smtp.starttls(context=tls.client_context())
        smtp.close()
    assert sink.wait_until(lambda: sink.sessions[0].closed)
    [session] = sink.sessions
    assert (session.tls, session.tls_failed) == (False, True)
    assert sink.auth_attempts == []


def test_self_signed_certificate_is_its_own_issuer(tls: TlsMaterial) -> None:
    ca_pem = tls.ca_file.read_text()
    files = tls.self_signed("relay.test")
    assert files.chain.read_text().count("BEGIN CERTIFICATE") == 1
    assert files.chain.read_text() not in ca_pem
    cert = x509.load_pem_x509_certificate(files.chain.read_bytes())
    assert cert.issuer == cert.subject


def test_required_starttls_refuses_mail_before_tls(make_sink: MakeSink, tls: TlsMaterial) -> None:
    sink = make_sink(starttls_context=tls.server_context("127.0.0.2"), require_starttls=True)
    with client(sink) as smtp:
        smtp.ehlo()
        assert smtp.mail(SENDER)[0] == 530
        smtp.starttls(context=tls.client_context())
        smtp.ehlo()
        assert smtp.mail(SENDER)[0] == 250


def test_broken_starttls_fails_the_handshake_then_plain_retry_delivers(
    make_sink: MakeSink, tls: TlsMaterial
) -> None:
    sink = make_sink(broken_starttls=True)
    with client(sink) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        with pytest.raises(ssl.SSLError):
            smtp.starttls(context=tls.client_context())
        smtp.close()
    with client(sink) as smtp:
        smtp.sendmail(SENDER, ["ok@x.test"], MESSAGE)
    first, second = sink.sessions
    assert first.commands == ["EHLO", "STARTTLS"]
    assert not first.tls
    assert (second.tls, len(second.messages)) == (False, 1)


def test_implicit_tls_with_auth(make_sink: MakeSink, tls: TlsMaterial) -> None:
    sink = make_sink(
        implicit_tls_context=tls.server_context("127.0.0.2"),
        auth=("user", "secret"),
        auth_required=True,
    )
    with smtplib.SMTP_SSL(
        sink.host, sink.port, local_hostname=CLIENT_NAME, context=tls.client_context(), timeout=5
    ) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert smtp.mail(SENDER)[0] == 530
        smtp.rset()
        smtp.login("user", "secret")
        smtp.sendmail(SENDER, ["ok@x.test"], MESSAGE)
    [session] = sink.sessions
    assert session.tls
    [attempt] = session.auth
    assert (attempt.username, attempt.password, attempt.tls, attempt.succeeded) == (
        "user",
        "secret",
        True,
        True,
    )
    assert sink.messages[0].tls


@pytest.mark.parametrize(("mechanism", "password"), [("PLAIN", "secret"), ("LOGIN", "wrong")])
def test_auth_after_starttls_records_credentials(
    make_sink: MakeSink, tls: TlsMaterial, mechanism: str, password: str
) -> None:
    sink = make_sink(starttls_context=tls.server_context("127.0.0.2"), auth=("user", "secret"))
    with client(sink) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")  # not before TLS
        smtp.starttls(context=tls.client_context())
        smtp.ehlo()
        assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        smtp.user, smtp.password = "user", password
        method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        if password == "secret":
            assert smtp.auth(mechanism, method, initial_response_ok=False)[0] == 235
        else:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.auth(mechanism, method, initial_response_ok=False)
    [attempt] = sink.auth_attempts
    assert (attempt.mechanism, attempt.username, attempt.password) == (mechanism, "user", password)
    assert attempt.tls
    assert attempt.succeeded == (password == "secret")


def test_auth_before_tls_is_refused_but_its_credentials_are_recorded(
    make_sink: MakeSink, tls: TlsMaterial
) -> None:
    sink = make_sink(starttls_context=tls.server_context("127.0.0.2"), auth=("user", "secret"))
    with client(sink) as smtp:
        smtp.ehlo()
        code, _ = smtp.docmd("AUTH", f"PLAIN {plain_auth('user', 'secret')}")
        assert code == 538
    [attempt] = sink.auth_attempts
    assert (attempt.username, attempt.password, attempt.tls) == ("user", "secret", False)
    assert not attempt.succeeded


def test_sink_without_auth_offers_none_and_records_attempts(
    make_sink: MakeSink, tls: TlsMaterial
) -> None:
    sink = make_sink(starttls_context=tls.server_context("127.0.0.2"))
    with client(sink) as smtp:
        smtp.ehlo()
        smtp.starttls(context=tls.client_context())
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", f"PLAIN {plain_auth('u', 'p')}")[0] == 502
    assert [(a.username, a.password) for a in sink.auth_attempts] == [("u", "p")]


def test_clear_forgets_records(make_sink: MakeSink) -> None:
    sink = make_sink()
    with client(sink) as smtp:
        smtp.sendmail(SENDER, ["ok@x.test"], MESSAGE)
    sink.clear()
    assert (sink.sessions, sink.messages) == ([], [])


async def test_wait_until_async_lets_the_test_loop_run(make_sink: MakeSink) -> None:
    sink = make_sink()
    reader, writer = await asyncio.open_connection(sink.host, sink.port)
    assert (await reader.readline()).startswith(b"220 sink.test")
    assert not await sink.wait_until_async(lambda: sink.sessions[0].closed, timeout=0.05)
    writer.close()  # takes effect only once this loop runs again, i.e. during the wait
    assert await sink.wait_until_async(lambda: sink.sessions[0].closed)
    await writer.wait_closed()


def test_stop_drops_open_connections(make_sink: MakeSink) -> None:
    sink = make_sink()
    with client(sink) as smtp:
        smtp.ehlo()
        sink.stop()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.mail(SENDER)


@pytest.mark.parametrize("greeting", ["421 4.3.2 busy", "554 5.7.1 go away"])
def test_greeting_server_refuses_then_answers_quit(
    make_greeting_server: MakeGreetingServer, greeting: str
) -> None:
    server = make_greeting_server(greeting, "127.0.0.4")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP(server.host, server.port, local_hostname=CLIENT_NAME, timeout=5)
    assert refused.value.smtp_code == int(greeting[:3])
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline() == greeting.encode() + b"\r\n"
        sock.sendall(b"EHLO client.test\r\nQUIT\r\n")
        assert reader.readline().startswith(b"503 ")
        assert reader.readline().startswith(b"221 ")
        assert reader.readline() == b""
        reader.close()
    assert server.connections == 2
    assert server.received[1] == ["EHLO client.test", "QUIT"]


def test_greeting_server_can_hang_up_after_greeting(
    make_greeting_server: MakeGreetingServer,
) -> None:
    server = make_greeting_server("421 4.3.2 busy", close_after_greeting=True)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline() == b"421 4.3.2 busy\r\n"
        assert reader.readline() == b""
        reader.close()


def test_silent_server_never_greets(make_silent_server: MakeSilentServer) -> None:
    server = make_silent_server("127.0.0.5")
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        smtplib.SMTP(server.host, server.port, local_hostname=CLIENT_NAME, timeout=0.3)
    assert server.connections == 1


def test_refused_port_refuses(make_refused_port: MakeRefusedPort) -> None:
    port = make_refused_port("127.0.0.6")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.6", port), timeout=5)


def test_peak_concurrent_sessions_counts_overlapping_connections(make_sink: MakeSink) -> None:
    sink = make_sink()
    with client(sink) as first, client(sink) as second:
        first.noop()
        second.noop()
    with client(sink) as third:
        third.noop()
    assert sink.wait_until(lambda: all(s.closed for s in sink.sessions))
    assert len(sink.sessions) == 3
    assert sink.peak_concurrent_sessions() == 2


def test_mail_from_reply_first_applies_to_the_first_sessions_only(make_sink: MakeSink) -> None:
    sink = make_sink(mail_from_reply="451 4.7.0 rate limited", mail_from_reply_first=1)
    with client(sink) as smtp, pytest.raises(smtplib.SMTPSenderRefused):
        smtp.sendmail(SENDER, ["ok@x.test"], MESSAGE)
    with client(sink) as smtp:
        smtp.sendmail(SENDER, ["ok@x.test"], MESSAGE)
    [accepted] = sink.messages
    assert accepted.accepted_at is not None
    assert sink.sessions[0].mail_from[0].reply == "451 4.7.0 rate limited"
