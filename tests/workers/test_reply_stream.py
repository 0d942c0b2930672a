"""The reply stream is never misread: a stray, garbled or misplaced reply ends the session.

Every server here is a `ScriptedServer` saying what a real one should not; each test checks the
recipient's outcome (never `Delivered` unless the server accepted the final dot), what the
server received, and that no raw server byte reached the status record.
"""

from __future__ import annotations

import pytest

from tests.support.raw_servers import Said, ScriptedServer
from tests.workers.test_connection_reuse import numbered
from tests.workers.test_pipelining import send
from tests.workers.test_smtp_session import message
from workers.model.outcome import Deferred, classify
from workers.model.reply import Reply, Step
from workers.smtp.connection_pool import ConnectionPool
from workers.smtp.record import Timeouts
from workers.smtp.session import SessionResult

NO_PIPELINING = "250 scripted.test"
GARBAGE: dict[str, bytes] = {
    "binary": b"\x00\xff\xfe\x1b[2J\x07",
    "no code": b"hello there",
    "escape sequence": b"2\x1b[31m50 ok",
    "code above 599": b"999 what",
    "1xx code": b"150 wait",
    "4 MiB line": b"250 " + b"x" * (4 << 20),
}


def protocol_error(reply: Reply, step: Step) -> None:
    assert (reply.code, reply.enhanced, reply.step) == (421, "4.5.0", step), reply
    assert isinstance(classify("a@x.test", reply), Deferred)


def printable_record(result: SessionResult) -> None:
    texts = [step.reply.text for step in result.steps] + [r.text for r in result.replies.values()]
    assert all(text.isprintable() and len(text) < 1200 for text in texts), texts


def content_sent(server: ScriptedServer) -> bool:
    return any(line.startswith("Subject") for lines in server.received for line in lines)


@pytest.mark.parametrize("ehlo", [None, NO_PIPELINING], ids=["pipelined", "one by one"])
async def test_a_stray_reply_ahead_of_mail_from_is_no_delivery(ehlo: str | None) -> None:
    # The stray "250 OK" would be read as MAIL FROM's reply, MAIL's as RCPT's and RCPT's as
    # DATA's: a "delivery" with no message sent.
    script: dict[str, Said | list[Said]] = {"MAIL": "250 OK\r\n250 2.1.0 sender ok"}
    if ehlo is not None:
        script["EHLO"] = ehlo
    with ScriptedServer("127.0.0.2", replies=script) as server:
        result = await send(server.host, server.port, ["a@x.test"])

    reply = result.replies["a@x.test"]
    assert (reply.code, reply.enhanced) == (421, "4.5.0"), reply
    assert isinstance(classify("a@x.test", reply), Deferred)
    assert not content_sent(server)


async def test_a_stray_reply_with_the_354_sends_no_message() -> None:
    # Read after the body, the stray "250 OK" would stand for the final reply, the 554 unread.
    script: dict[str, Said | list[Said]] = {
        "DATA": "354 go ahead\r\n250 OK",
        ".": "554 5.7.1 rejected",
    }
    with ScriptedServer("127.0.0.2", replies=script) as server:
        result = await send(server.host, server.port, ["a@x.test"])

    reply = result.replies["a@x.test"]
    assert (reply.code, reply.enhanced) == (421, "4.5.0"), reply
    assert isinstance(classify("a@x.test", reply), Deferred)
    assert "may have accepted" not in reply.text  # nothing of the message was sent
    assert not content_sent(server)


async def test_a_stray_reply_ahead_of_the_final_reply_is_an_ambiguous_deferral() -> None:
    with ScriptedServer("127.0.0.2", replies={".": "250 OK\r\n554 5.7.1 rejected"}) as server:
        result = await send(server.host, server.port, ["a@x.test"])

    reply = result.replies["a@x.test"]
    protocol_error(reply, Step.DATA)
    assert "may have accepted the message" in reply.text


@pytest.mark.parametrize(
    ("verb", "said", "step"),
    [
        ("MAIL", "354 go ahead", Step.MAIL_FROM),
        ("RCPT", "354 go ahead", Step.RCPT_TO),
        ("DATA", "250 2.0.0 ok", Step.DATA),
        (".", "354 more please", Step.DATA),
    ],
)
async def test_a_reply_of_a_class_impossible_for_its_command_is_a_protocol_error(
    verb: str, said: str, step: Step
) -> None:
    with ScriptedServer("127.0.0.2", replies={verb: said}) as server:
        result = await send(server.host, server.port, ["a@x.test"])

    protocol_error(result.replies["a@x.test"], step)
    assert server.connections == 1


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
@pytest.mark.parametrize(
    ("where", "step"),
    [
        ("greeting", Step.OPEN_SESSION),
        ("EHLO", Step.OPEN_SESSION),
        ("RCPT", Step.RCPT_TO),
        (".", Step.DATA),
    ],
)
async def test_garbage_from_the_server_is_a_protocol_error(
    garbage: bytes, where: str, step: Step
) -> None:
    # Garbage makes the whole stream untrustworthy, replies still unread included: a pipelined
    # MAIL FROM whose 250 came in the same read as the garbage gets the protocol error.
    if where == "greeting":
        server = ScriptedServer("127.0.0.2", greeting=garbage)
    else:
        server = ScriptedServer("127.0.0.2", replies={where: garbage})
    with server:
        result = await send(server.host, server.port, ["a@x.test"])

    reply = result.replies["a@x.test"]
    if step is Step.RCPT_TO and reply.step is Step.MAIL_FROM:
        step = Step.MAIL_FROM
    protocol_error(reply, step)
    printable_record(result)
    assert all(step.reply.code >= 200 for step in result.steps)


async def test_an_escape_sequence_in_a_good_reply_is_kept_escaped() -> None:
    greeting = b"220 mx.test \x1b]0;owned\x07\x1b[2J ready"
    with ScriptedServer("127.0.0.2", greeting=greeting) as server:
        result = await send(server.host, server.port, ["a@x.test"])

    assert result.replies["a@x.test"].code == 250
    assert result.steps[0].reply.text == "mx.test \\x1b]0;owned\\x07\\x1b[2J ready"
    printable_record(result)


async def test_a_server_that_stops_reading_the_message_is_deferred_at_the_data_bound() -> None:
    # Bigger than both sockets' buffers on loopback: the write cannot complete.
    big = message(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 24_000)
    timeouts = Timeouts(connect=2, command=2, data=30, session=20, data_block=0.3)
    with ScriptedServer("127.0.0.2", stall_after_354=True) as server:
        result = await send(server.host, server.port, ["a@x.test"], msg=big, timeouts=timeouts)

    reply = result.replies["a@x.test"]
    assert (reply.code, reply.enhanced, reply.step) == (421, "4.4.2", Step.DATA), reply
    assert "no data for 0.3 s" in reply.text
    assert "may have accepted" not in reply.text  # the final dot never left


async def test_an_unanswered_rset_gives_up_on_the_connection_at_its_bound(
    pool: ConnectionPool,
) -> None:
    # The second transaction's RSET gets no reply: after `rset` seconds (not COMMAND_TIMEOUT,
    # nor the session's deadline) a fresh connection carries the message.
    timeouts = Timeouts(connect=2, command=60, data=2, session=20, rset=0.3)
    with ScriptedServer("127.0.0.2", hang_at="RSET") as server:
        first = await send(server.host, server.port, ["a@x.test"], pool=pool, timeouts=timeouts)
        second = await send(
            server.host, server.port, ["a@x.test"], pool=pool, msg=numbered(2), timeouts=timeouts
        )

    assert first.replies["a@x.test"].code == 250
    assert second.replies["a@x.test"].code == 250
    assert [(s.command, s.reply.code, s.reply.enhanced) for s in second.steps][:2] == [
        ("RSET", 421, "4.4.2"),
        ("connect", 220, ""),
    ]
    assert server.connections == 2


async def test_552_to_rcpt_means_too_many_recipients_and_defers_the_rest() -> None:
    # RFC 5321 §4.5.3.1.10: a 552 to RCPT TO is "too many recipients", as 452 (Postfix too).
    rcpt: list[Said] = ["250 2.1.5 ok", "552 5.5.3 too many recipients"]
    with ScriptedServer("127.0.0.2", replies={"RCPT": rcpt}) as server:
        result = await send(server.host, server.port, ["a@x.test", "b@x.test", "c@x.test"])

    assert result.replies["a@x.test"].code == 250
    for recipient in ("b@x.test", "c@x.test"):
        reply = result.replies[recipient]
        assert (reply.code, reply.enhanced, reply.step) == (452, "4.5.3", Step.RCPT_TO)
        assert isinstance(classify(recipient, reply), Deferred)
    assert content_sent(server)


@pytest.mark.parametrize("said", ["451 4.3.0 try later", "554 5.7.1 not you", "421 4.3.2 bye"])
async def test_ehlo_refused_with_other_than_500_or_502_does_not_fall_back_to_helo(
    said: str,
) -> None:
    with ScriptedServer("127.0.0.2", replies={"EHLO": said}) as server:
        result = await send(server.host, server.port, ["a@x.test"])

    reply = result.replies["a@x.test"]
    assert (reply.code, reply.step) == (int(said[:3]), Step.OPEN_SESSION)
    assert not any(line.startswith("HELO") for line in server.received[0])
    assert not content_sent(server)


@pytest.mark.parametrize("said", ["500 5.5.1 command unrecognized", "502 5.5.2 not implemented"])
async def test_ehlo_not_recognised_falls_back_to_helo(said: str) -> None:
    with ScriptedServer("127.0.0.2", replies={"EHLO": said}) as server:
        result = await send(server.host, server.port, ["a@x.test"])

    assert result.replies["a@x.test"].code == 250
    assert [line.split()[0] for line in server.received[0][:2]] == ["EHLO", "HELO"]
