"""The SMTP session against real aiosmtpd sinks and raw TCP servers on loopback.

Each test runs one session and checks both sides: the replies and steps Mailroom recorded, and
what the sink actually received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.support.raw_servers import MakeGreetingServer, MakeRefusedPort, MakeSilentServer
from tests.support.smtp_sink import MakeSink
from workers.model.envelope import OutboundMessage, outbound
from workers.model.reply import Reply, Step
from workers.smtp.peer import Credentials, Errand, Peer
from workers.smtp.record import Timeouts
from workers.smtp.session import SessionResult, run_session
from workers.smtp.tls_policy import TlsPolicy

FAST = Timeouts(connect=2, command=2, data=2, session=10)
BODY = b"From: app@example.test\r\nSubject: hi\r\nMessage-ID: <m1@mailroom.test>\r\n\r\nhello\r\n"


def message(
    data: bytes = BODY, *, smtputf8: bool = False, sender: str = "app@example.test"
) -> OutboundMessage:
    return outbound("m1", sender, data, smtputf8=smtputf8)


async def session(
    port: int,
    recipients: Sequence[str],
    *,
    host: str = "mx.test",
    address: str = "127.0.0.2",
    msg: OutboundMessage | None = None,
    tls: TlsPolicy | None = None,
    timeouts: Timeouts = FAST,
    credentials: Credentials | None = None,
    deadline_in: float | None = None,
) -> SessionResult:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (deadline_in if deadline_in is not None else timeouts.session)
    return await run_session(
        Peer(host, address, port, tls, "client.mailroom.test", timeouts, credentials),
        Errand(msg or message(), recipients, deadline),
    )


def codes(result: SessionResult) -> list[tuple[str, int]]:
    return [(step.command, step.reply.code) for step in result.steps]


def short(reply: Reply) -> tuple[int, str, Step]:
    return (reply.code, reply.enhanced, reply.step)


async def test_accepted_session_records_every_step_and_delivers(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    result = await session(sink.port, ["a@x.test", "b@x.test"])

    assert codes(result) == [
        ("connect", 220),
        ("EHLO", 250),
        ("MAIL FROM", 250),
        ("RCPT TO", 250),
        ("RCPT TO", 250),
        ("DATA", 250),
        ("QUIT", 221),
    ]
    assert [s.reply.step for s in result.steps] == [
        Step.OPEN_SESSION,
        Step.OPEN_SESSION,
        Step.MAIL_FROM,
        Step.RCPT_TO,
        Step.RCPT_TO,
        Step.DATA,
        Step.QUIT,
    ]
    assert result.steps[2].reply.enhanced == "2.1.0"  # parsed off the sink's "250 2.1.0 sender ok"
    assert all(step.ms >= 0 for step in result.steps)
    assert {r: short(reply) for r, reply in result.replies.items()} == {
        "a@x.test": (250, "2.0.0", Step.DATA),
        "b@x.test": (250, "2.0.0", Step.DATA),
    }
    [received] = sink.messages
    assert received.mail_from == "app@example.test"
    assert received.rcpt_tos == ("a@x.test", "b@x.test")
    assert received.content.replace(b"\r\n", b"\n") == BODY.replace(b"\r\n", b"\n")
    assert sink.sessions[0].helo == "client.mailroom.test"
    assert sink.sessions[0].ehlo


async def test_one_refused_recipient_does_not_fail_the_others(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    result = await session(
        sink.port, ["550-unknown@x.test", "ok@x.test", "451-greylist@x.test", "two@x.test"]
    )

    assert short(result.replies["550-unknown@x.test"]) == (550, "5.1.1", Step.RCPT_TO)
    assert short(result.replies["451-greylist@x.test"]) == (451, "4.7.1", Step.RCPT_TO)
    assert short(result.replies["ok@x.test"]) == (250, "2.0.0", Step.DATA)
    assert short(result.replies["two@x.test"]) == (250, "2.0.0", Step.DATA)
    [received] = sink.messages
    assert received.rcpt_tos == ("ok@x.test", "two@x.test")


async def test_no_accepted_recipient_means_no_data(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    result = await session(sink.port, ["550-unknown@x.test"])

    assert short(result.replies["550-unknown@x.test"]) == (550, "5.1.1", Step.RCPT_TO)
    assert "DATA" not in [step.command for step in result.steps]
    assert sink.received == []


async def test_ehlo_refused_falls_back_to_helo(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", refuse_ehlo=True)
    result = await session(sink.port, ["a@x.test"])

    assert codes(result)[:3] == [("connect", 220), ("EHLO", 502), ("HELO", 250)]
    assert result.replies["a@x.test"].code == 250
    assert sink.sessions[0].helo == "client.mailroom.test"
    assert not sink.sessions[0].ehlo
    # Without EHLO there are no extensions: no SIZE parameter may be sent.
    assert sink.sessions[0].mail_from[0].options == ()
    assert len(sink.messages) == 1


async def test_mail_from_carries_size_when_offered(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", data_size_limit=10_000)
    result = await session(sink.port, ["a@x.test"])

    assert result.replies["a@x.test"].code == 250
    assert sink.sessions[0].mail_from[0].options == (f"SIZE={len(BODY)}",)


async def test_message_above_the_servers_size_limit_is_refused_before_mail_from(
    make_sink: MakeSink,
) -> None:
    sink = make_sink("127.0.0.2", data_size_limit=50)
    result = await session(sink.port, ["a@x.test"])

    assert short(result.replies["a@x.test"]) == (552, "5.3.4", Step.MAIL_FROM)
    assert sink.sessions[0].mail_from == []
    assert sink.received == []


async def test_eight_bit_message_asks_for_8bitmime_only_when_needed(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", data_size_limit=None)
    eight_bit = message(BODY + "grüße\r\n".encode())
    await session(sink.port, ["a@x.test"], msg=eight_bit)
    await session(sink.port, ["b@x.test"])

    first, second = sink.sessions
    assert first.mail_from[0].options == ("BODY=8BITMIME",)
    assert second.mail_from[0].options == ()
    assert len(sink.messages) == 2


async def test_smtputf8_message_uses_smtputf8_when_offered(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", data_size_limit=None)
    utf8 = message(BODY, smtputf8=True, sender="jörg@example.test")
    result = await session(sink.port, ["zoë@x.test"], msg=utf8)

    assert result.replies["zoë@x.test"].code == 250
    assert sink.sessions[0].mail_from[0].options == ("SMTPUTF8",)
    assert sink.messages[0].rcpt_tos == ("zoë@x.test",)
    assert sink.messages[0].mail_from == "jörg@example.test"


async def test_smtputf8_message_bounces_when_server_lacks_it(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", smtputf8=False)
    utf8 = message(BODY, smtputf8=True, sender="jörg@example.test")
    result = await session(sink.port, ["zoë@x.test"], msg=utf8)

    assert short(result.replies["zoë@x.test"]) == (553, "5.6.7", Step.MAIL_FROM)
    assert sink.sessions[0].mail_from == []


async def test_refused_sender_applies_to_every_recipient(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", mail_from_reply="550 5.7.1 sender rejected")
    result = await session(sink.port, ["a@x.test", "b@x.test"])

    assert {short(r) for r in result.replies.values()} == {(550, "5.7.1", Step.MAIL_FROM)}
    assert sink.sessions[0].rcpt_to == []
    assert codes(result)[-1] == ("QUIT", 221)


async def test_disconnect_at_rcpt_ends_the_session_for_everyone_left(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    result = await session(sink.port, ["ok@x.test", "421-disconnect@x.test", "later@x.test"])

    for recipient in ("ok@x.test", "421-disconnect@x.test", "later@x.test"):
        assert short(result.replies[recipient]) == (421, "4.4.2", Step.RCPT_TO), recipient
    assert sink.received == []
    assert [r.address for r in sink.sessions[0].rcpt_to] == ["ok@x.test", "421-disconnect@x.test"]


async def test_slow_rcpt_times_out_at_its_step(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", slow_seconds=3)
    timeouts = Timeouts(connect=2, command=0.3, data=2, session=10)
    result = await session(sink.port, ["slow-rcpt@x.test"], timeouts=timeouts)

    reply = result.replies["slow-rcpt@x.test"]
    assert short(reply) == (421, "4.4.2", Step.RCPT_TO)
    assert "no reply in time" in reply.text


@pytest.mark.parametrize("recipient", ["slow-data@x.test", "disconnect-data@x.test"])
async def test_lost_reply_after_the_dot_is_an_ambiguous_deferral(
    make_sink: MakeSink, recipient: str
) -> None:
    sink = make_sink("127.0.0.2", slow_seconds=1)
    timeouts = Timeouts(connect=2, command=2, data=0.3, session=10)
    result = await session(sink.port, [recipient], timeouts=timeouts)

    reply = result.replies[recipient]
    assert (reply.code // 100, reply.step) == (4, Step.DATA)
    assert "may have accepted the message" in reply.text
    # The sink did get the whole message: hence "ambiguous".
    assert await sink.wait_until_async(lambda: len(sink.received) == 1)


async def test_data_refusal_applies_to_every_accepted_recipient(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    result = await session(sink.port, ["452-data@x.test", "ok@x.test", "550-no@x.test"])

    assert short(result.replies["452-data@x.test"]) == (452, "4.3.1", Step.DATA)
    assert short(result.replies["ok@x.test"]) == (452, "4.3.1", Step.DATA)
    assert short(result.replies["550-no@x.test"]) == (550, "5.1.1", Step.RCPT_TO)
    assert "may have accepted" not in result.replies["ok@x.test"].text


async def test_overall_deadline_abandons_the_session(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", slow_seconds=3)
    timeouts = Timeouts(connect=2, command=10, data=10, session=10)
    result = await session(sink.port, ["slow-rcpt@x.test"], timeouts=timeouts, deadline_in=0.4)

    assert short(result.replies["slow-rcpt@x.test"]) == (421, "4.4.7", Step.RCPT_TO)


@pytest.mark.parametrize(
    ("greeting", "expected"),
    [("421 4.3.2 busy", (421, "4.3.2")), ("554 5.7.1 go away", (554, "5.7.1"))],
)
async def test_refusing_greeting_is_recorded_with_its_code(
    make_greeting_server: MakeGreetingServer, greeting: str, expected: tuple[int, str]
) -> None:
    server = make_greeting_server(greeting, "127.0.0.2")
    result = await session(server.port, ["a@x.test"])

    assert short(result.replies["a@x.test"]) == (*expected, Step.OPEN_SESSION)
    assert not result.greeted
    assert [line for lines in server.received for line in lines if line.startswith("MAIL")] == []


async def test_refused_connection_is_no_answer(make_refused_port: MakeRefusedPort) -> None:
    port = make_refused_port("127.0.0.2")
    result = await session(port, ["a@x.test"])

    reply = result.replies["a@x.test"]
    assert short(reply) == (421, "4.4.1", Step.OPEN_SESSION)
    assert "refused" in reply.text.lower()
    assert codes(result) == [("connect", 421)]


async def test_silent_server_times_out_waiting_for_the_greeting(
    make_silent_server: MakeSilentServer,
) -> None:
    server = make_silent_server("127.0.0.2")
    timeouts = Timeouts(connect=2, command=0.3, data=2, session=10)
    result = await session(server.port, ["a@x.test"], timeouts=timeouts)

    assert short(result.replies["a@x.test"]) == (421, "4.4.1", Step.OPEN_SESSION)
    assert server.connections == 1


async def test_probe_stops_after_rcpt_without_sending(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    loop = asyncio.get_running_loop()
    result = await run_session(
        Peer("mx.test", "127.0.0.2", sink.port, None, "client.mailroom.test", FAST),
        Errand(message(), ["ok@x.test", "550-unknown@x.test"], loop.time() + 10, probe=True),
    )

    assert short(result.replies["ok@x.test"]) == (250, "2.1.5", Step.RCPT_TO)
    assert short(result.replies["550-unknown@x.test"]) == (550, "5.1.1", Step.RCPT_TO)
    assert "DATA" not in [step.command for step in result.steps]
    assert codes(result)[-1] == ("QUIT", 221)
    assert sink.received == []
