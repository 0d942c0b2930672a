"""SMTP PIPELINING (RFC 2920) on the wire: what the server read, in which writes, and in what order.

aiosmtpd sinks announcing PIPELINING record every read as it arrived (`SessionRecord.chunks`);
`ScriptedServer` answers what a well-behaved server would not, to show the client never sends a
message it must not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.support.raw_servers import ScriptedServer
from tests.support.smtp_sink import MakeSink, Sink
from tests.workers.test_connection_reuse import numbered
from tests.workers.test_smtp_session import FAST, message
from workers.model.envelope import OutboundMessage
from workers.model.reply import Code, Step
from workers.smtp.connection_pool import ConnectionPool
from workers.smtp.framing import message_bytes
from workers.smtp.peer import Errand, Peer
from workers.smtp.record import Timeouts
from workers.smtp.session import SessionResult, run_session


async def send(
    address: str,
    port: int,
    recipients: Sequence[str],
    *,
    pool: ConnectionPool | None = None,
    msg: OutboundMessage | None = None,
    timeouts: Timeouts = FAST,
) -> SessionResult:
    deadline = asyncio.get_running_loop().time() + timeouts.session
    return await run_session(
        Peer("mx.test", address, port, None, "client.mailroom.test", timeouts),
        Errand(msg or message(), recipients, deadline, pool=pool),
    )


def chunk_with(sink: Sink, needle: bytes, session: int = 0) -> bytes:
    """The one read of `session` holding `needle`."""
    found = [chunk for chunk in sink.sessions[session].chunks if needle in chunk]
    assert len(found) == 1, found
    return found[0]


def verbs(chunk: bytes) -> list[str]:
    return [line.split(b":")[0].split(b" ")[0].decode() for line in chunk.splitlines()]


async def test_mail_rcpt_and_data_go_out_in_one_write(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", pipelining=True)
    result = await send(sink.host, sink.port, ["a@x.test", "b@x.test"])

    assert [m.rcpt_tos for m in sink.received] == [("a@x.test", "b@x.test")]
    assert verbs(chunk_with(sink, b"MAIL FROM")) == ["MAIL", "RCPT", "RCPT", "DATA"]
    # The status record reads as it does without pipelining: one step per command.
    assert [(s.command, s.reply.code) for s in result.steps] == [
        ("connect", 220),
        ("EHLO", 250),
        ("MAIL FROM", 250),
        ("RCPT TO", 250),
        ("RCPT TO", 250),
        ("DATA", 250),
        ("QUIT", 221),
    ]
    assert {r: reply.step for r, reply in result.replies.items()} == {
        "a@x.test": Step.DATA,
        "b@x.test": Step.DATA,
    }


async def test_without_pipelining_each_command_waits_for_its_reply(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    await send(sink.host, sink.port, ["a@x.test", "b@x.test"])

    assert len(sink.received) == 1
    for needle in (b"MAIL FROM", b"RCPT TO:<a@", b"RCPT TO:<b@", b"DATA\r\n"):
        assert len(verbs(chunk_with(sink, needle))) == 1, needle


async def test_a_reused_connection_pipelines_rset_with_the_next_transaction(
    make_sink: MakeSink, pool: ConnectionPool
) -> None:
    sink = make_sink("127.0.0.2", pipelining=True)
    for number in (1, 2):
        await send(sink.host, sink.port, ["a@x.test"], pool=pool, msg=numbered(number))

    assert [m.message_id for m in sink.messages] == ["<m1@mailroom.test>", "<m2@mailroom.test>"]
    assert len(sink.sessions) == 1
    assert verbs(chunk_with(sink, b"RSET")) == ["RSET", "MAIL", "RCPT", "DATA"]


async def test_refused_sender_sends_no_message(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", pipelining=True, mail_from_reply="451 4.3.0 try later")
    result = await send(sink.host, sink.port, ["a@x.test", "b@x.test"])

    assert sink.received == []
    for recipient in ("a@x.test", "b@x.test"):
        reply = result.replies[recipient]
        assert (reply.code, reply.enhanced, reply.step) == (451, "4.3.0", Step.MAIL_FROM)


async def test_refused_recipients_keep_their_own_replies(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", pipelining=True)
    result = await send(sink.host, sink.port, ["550-no@x.test", "ok@x.test", "452-full@x.test"])

    assert [m.rcpt_tos for m in sink.received] == [("ok@x.test",)]
    got = {r: (reply.code, reply.step) for r, reply in result.replies.items()}
    assert got == {
        "550-no@x.test": (550, Step.RCPT_TO),
        "ok@x.test": (250, Step.DATA),
        "452-full@x.test": (452, Step.RCPT_TO),
    }


async def test_every_recipient_refused_sends_no_message(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", pipelining=True)
    result = await send(sink.host, sink.port, ["550-no@x.test", "550-nor@x.test"])

    assert sink.received == []
    assert {reply.code for reply in result.replies.values()} == {550}
    # DATA went with the group; the server refused it, as RFC 2920 §3.1 requires.
    assert sink.sessions[0].commands.count("DATA") == 1


async def test_a_dropped_connection_at_rcpt_defers_everyone(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", pipelining=True)
    recipients = ["ok@x.test", "421-disconnect@x.test", "later@x.test"]
    result = await send(sink.host, sink.port, recipients)

    assert sink.received == []
    for recipient in recipients:
        reply = result.replies[recipient]
        assert (reply.code, reply.enhanced, reply.step) == (421, "4.4.2", Step.RCPT_TO), recipient


async def test_lost_reply_after_the_dot_is_ambiguous_when_pipelined(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", pipelining=True, slow_seconds=1)
    timeouts = Timeouts(connect=2, command=2, data=0.3, session=10)
    result = await send(sink.host, sink.port, ["slow-data@x.test"], timeouts=timeouts)

    reply = result.replies["slow-data@x.test"]
    assert (reply.code // 100, reply.step) == (4, Step.DATA)
    assert "may have accepted the message" in reply.text
    assert await sink.wait_until_async(lambda: len(sink.received) == 1)


async def test_a_354_after_every_recipient_failed_gets_no_content() -> None:
    # A server that should have refused DATA (RFC 2920 §3.1) but said 354: ending the data
    # with a dot could deliver an empty message, so the client hangs up instead.
    with ScriptedServer("127.0.0.2", replies={"RCPT": "550 5.1.1 no such user"}) as server:
        result = await send(server.host, server.port, ["a@x.test"])
        await asyncio.sleep(0.1)

    assert result.replies["a@x.test"].code == Code.MAILBOX_UNAVAILABLE
    sent = server.received[0]
    assert sent[-1] == "DATA"
    assert "." not in sent
    assert not any(line.startswith("Subject") for line in sent)


@pytest.mark.parametrize("said", ["421 4.4.2 idle timeout", "250 2.0.0 stray reply"])
async def test_a_parked_connection_that_spoke_out_of_turn_is_not_reused(
    pool: ConnectionPool, said: str
) -> None:
    # A 421 heard while parked means the server is closing it; a stray 250 would put every
    # later reply one command off (DATA's "354" read as RCPT's), so neither is reused.
    with ScriptedServer("127.0.0.2", out_of_turn=said) as server:
        first = await send(server.host, server.port, ["a@x.test"], pool=pool, msg=numbered(1))
        while not server.spoke.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # a loop turn or two: the parked connection hears it
        second = await send(server.host, server.port, ["a@x.test"], pool=pool, msg=numbered(2))

    assert [first.replies["a@x.test"].code, second.replies["a@x.test"].code] == [250, 250]
    assert server.connections == 2
    assert [line for lines in server.received for line in lines if line.startswith("Subject")] == [
        "Subject: n1",
        "Subject: n2",
    ]


async def test_an_address_with_a_line_break_is_never_sent(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2", pipelining=True)
    result = await send(sink.host, sink.port, ["ok@x.test", "evil@x.test>\r\nRSET\r\nRCPT TO:<x"])

    bad = result.replies["evil@x.test>\r\nRSET\r\nRCPT TO:<x"]
    assert (bad.code, bad.enhanced, bad.step) == (553, "5.1.3", Step.RCPT_TO)
    assert [m.rcpt_tos for m in sink.received] == [("ok@x.test",)]
    assert "RSET" not in sink.sessions[0].commands


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b".starts\r\n.mid\r\nend", b"..starts\r\n..mid\r\nend\r\n.\r\n"),
        (b"bare\nlf\rcr\r\n", b"bare\r\nlf\r\ncr\r\n.\r\n"),
        (b"", b"\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
    ],
)
def test_message_bytes_are_crlf_and_dot_stuffed(data: bytes, wire: bytes) -> None:
    assert message_bytes(data) == wire
