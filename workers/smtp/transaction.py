"""One mail transaction on an open connection: steps 3 to 5 (MAIL FROM, RCPT TO, DATA).

With the server's PIPELINING (RFC 2920 §3.1) every command up to DATA goes out in one write (RSET
first on a reused connection) and the replies are read in order; without it, one command per
reply, and nothing is sent that an earlier reply made pointless. The message itself only follows
a 354, so a transaction whose MAIL FROM or every RCPT TO failed never sends it. Which recipient a
failure applies to follows Postfix's `smtp_trouble.c`: MAIL FROM and DATA failures hit every
recipient still in play, a RCPT refusal that recipient only.

A reply is only taken as the answer to its command when it can be one: a class the command can
get (RFC 5321 §4.3.2), nothing else heard where nothing was asked, and for the final reply, come
after the final dot left. Anything else means the reply stream is out of step with the commands
(a stray "250 OK" would make RCPT's 250 read as DATA's, a delivery with no message sent): the
connection is dropped and everyone still in play deferred with 421 4.5.0, ambiguously once the
message was sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from workers.model import reply as replies
from workers.model.envelope import OutboundMessage
from workers.model.reply import Code, Reply, Step, parse_reply
from workers.model.throttling import is_throttling
from workers.smtp.connection import Connection
from workers.smtp.framing import command_line, message_bytes
from workers.smtp.peer import Errand
from workers.smtp.record import Ledger, Timeouts, ambiguous
from workers.smtp.wire import NoReply, Wire

FINAL = (2, 4, 5)  # the classes of a final reply, the only ones RSET, MAIL, RCPT or the dot get
START = (3, 4, 5)  # DATA before the message: 354, or a refusal; never a 2xx

_STEPS = {
    "RSET": Step.OPEN_SESSION,
    "MAIL FROM": Step.MAIL_FROM,
    "RCPT TO": Step.RCPT_TO,
    "DATA": Step.DATA,
    "QUIT": Step.QUIT,
}

Command = tuple[str, bytes, str | None]  # verb, the line to send, the recipient of a RCPT TO


@dataclass(frozen=True, slots=True)
class Awaited:
    """A reply being waited for: to `verb`, sent at `started` (`time.perf_counter()`), for at
    most `timeout` seconds, in one of the classes `expect`. The `last` reply of a transaction
    (after the dot) must also come after the dot left, and nothing after it."""

    verb: str
    started: float
    timeout: float
    expect: tuple[int, ...] = FINAL
    last: bool = False


async def transaction(
    ledger: Ledger,
    connection: Connection,
    errand: Errand,
    timeouts: Timeouts,
    *,
    reset: bool,
) -> bool:
    """Run `errand`'s transaction on `connection`, recording into `ledger`; a reused connection
    (`reset`) gets RSET first. A probe stops after RCPT TO: each accepted recipient's reply
    is its RCPT reply.

    False when RSET failed: the caller drops the connection (and with it whatever was
    pipelined), and nothing of this message reached the server.
    """
    run = _Transaction(ledger, connection, errand.message, timeouts)
    return await run.run(reset=reset, probe=errand.probe)


async def read_reply(ledger: Ledger, wire: Wire, awaited: Awaited) -> Reply:
    """The next reply from `wire`, recorded as `awaited.verb`'s; a made-up one if none came, or
    if what came cannot be its: a class it does not expect, or, for the last reply of a
    transaction, one complete before the dot left or followed by more bytes.
    """
    verb, started = awaited.verb, awaited.started
    ledger.step = _STEPS[verb]
    got = await wire.read(awaited.timeout)
    if isinstance(got, NoReply):
        ledger.lost = True
        if got.garbled:
            answer = replies.protocol_error(ledger.host, ledger.step, got.reason)
        else:
            answer = replies.connection_dropped(ledger.host, ledger.step, got.reason)
        ledger.record(verb, answer, started)
        return answer
    answer = parse_reply(got.code, got.text, ledger.step)
    if answer.reply_class not in awaited.expect:
        return _out_of_step(ledger, wire, verb, f"{answer} is no reply to {verb}", started)
    if awaited.last and (got.at < wire.flushed or wire.heard_more):
        return _out_of_step(ledger, wire, verb, f"{answer} came out of step", started)
    if answer.reply_class > 3:
        ledger.throttled = ledger.throttled or is_throttling(
            answer.code, answer.enhanced, answer.text
        )
    ledger.record(verb, answer, started, got.at)
    return answer


def _out_of_step(ledger: Ledger, wire: Wire, verb: str, detail: str, started: float) -> Reply:
    """End a conversation whose replies no longer match its commands, recording why."""
    wire.abort("reply stream out of step")
    ledger.lost = True
    answer = replies.protocol_error(ledger.host, ledger.step, detail)
    ledger.record(verb, answer, started)
    return answer


class _Transaction:
    def __init__(
        self,
        ledger: Ledger,
        connection: Connection,
        message: OutboundMessage,
        timeouts: Timeouts,
    ) -> None:
        assert connection.wire is not None
        self.ledger = ledger
        self.connection = connection
        self.smtp = connection.smtp  # what EHLO announced
        self.wire = connection.wire
        self.message = message
        self.timeouts = timeouts
        self.accepted: dict[str, Reply] = {}  # recipients accepted at RCPT TO, with that reply

    async def run(self, *, reset: bool, probe: bool) -> bool:
        ledger, wire, connection = self.ledger, self.wire, self.connection
        ledger.step = Step.MAIL_FROM
        commands = self.unsendable() or self.commands(reset=reset, probe=probe)
        if isinstance(commands, Reply):
            ledger.fail(commands, "MAIL FROM")
            return True  # nothing was sent: a reused connection is as clean as it was
        if not wire.quiet:
            # Heard something nobody asked for since the last reply: not one command may go.
            if reset:
                return False
            wire.abort("the server spoke out of turn")
            ledger.lost = True
            unasked = replies.protocol_error(ledger.host, Step.MAIL_FROM, "spoke out of turn")
            ledger.fail(unasked, "MAIL FROM")
            return True
        connection.transactions += 1
        pipelined = connection.pipelining
        started = time.perf_counter()
        if pipelined:
            wire.send(b"".join(line for _, line, _ in commands), len(commands))
        sender_accepted = False
        for verb, line, recipient in commands:
            if not pipelined:
                if verb in ("RCPT TO", "DATA") and not sender_accepted:
                    break
                if verb == "DATA" and not self.accepted:
                    break
                started = time.perf_counter()
                wire.send(line, 1)
            timeout = self.timeouts.rset if verb == "RSET" else self.timeouts.command
            expect = START if verb == "DATA" else FINAL
            answer = await read_reply(ledger, wire, Awaited(verb, started, timeout, expect))
            if recipient is not None:
                ledger.name_recipient(recipient)
            if verb == "RSET":
                if answer.reply_class != 2:
                    return False
            elif verb == "MAIL FROM":
                sender_accepted = answer.reply_class == 2
                if not sender_accepted:
                    ledger.fail(answer)
            elif verb == "RCPT TO" and sender_accepted:
                assert recipient is not None
                self.rcpt_reply(recipient, answer)
            elif verb == "DATA":
                await self.data(answer, started, sendable=sender_accepted)
            if ledger.lost or answer.code == Code.SERVICE_UNAVAILABLE:
                break  # RFC 5321 §3.8: 421 means the server is closing the session
        if probe:
            ledger.replies.update(self.accepted)
        return True

    def commands(self, *, reset: bool, probe: bool) -> list[Command] | Reply:
        """The transaction's commands; a `Reply` for a sender that cannot go on the wire (a
        recipient that cannot gets its own reply and no RCPT TO)."""
        options = []
        if self.smtp.supports_extension("size"):
            options.append(f" SIZE={self.message.size}")
        if self.message.smtputf8:
            options.append(" SMTPUTF8")
        if self.message.eight_bit and self.smtp.supports_extension("8bitmime"):
            options.append(" BODY=8BITMIME")
        utf8 = self.message.smtputf8
        sender = command_line(f"MAIL FROM:<{self.message.sender}>{''.join(options)}", utf8)
        if sender is None:
            return replies.bad_address(Step.MAIL_FROM)
        commands: list[Command] = []
        if reset:
            commands.append(("RSET", b"RSET\r\n", None))
        commands.append(("MAIL FROM", sender, None))
        for recipient in self.ledger.recipients:
            line = command_line(f"RCPT TO:<{recipient}>", utf8)
            if line is None:
                self.ledger.replies[recipient] = replies.bad_address(Step.RCPT_TO)
            else:
                commands.append(("RCPT TO", line, recipient))
        if not probe:
            commands.append(("DATA", b"DATA\r\n", None))
        return commands

    def unsendable(self) -> Reply | None:
        """A reason this server cannot take this message at all, known before MAIL FROM."""
        host = self.ledger.host
        limit = self.smtp.esmtp_extensions.get("size", "")
        if limit.isdigit() and 0 < int(limit) < self.message.size:
            return replies.message_too_big(host, self.message.size, int(limit))
        if self.message.smtputf8 and not self.smtp.supports_extension("smtputf8"):
            return replies.smtputf8_unavailable(host)
        return None

    def rcpt_reply(self, recipient: str, answer: Reply) -> None:
        if answer.reply_class == 2:
            self.accepted[recipient] = answer
            return
        if answer.code == Code.EXCEEDED_STORAGE:
            # RFC 5321 §4.5.3.1.10: 552 to RCPT TO is the old "too many recipients"; as in
            # Postfix it is 452, so this recipient goes in a later transaction, not a bounce.
            enhanced = "4" + answer.enhanced[1:] if answer.enhanced else ""
            answer = Reply(Code.INSUFFICIENT_STORAGE, enhanced, answer.text, answer.step)
        self.ledger.replies[recipient] = answer
        if self.ledger.lost or answer.code == Code.SERVICE_UNAVAILABLE:
            # A 421 or a dropped connection ends the session for everyone still waiting, the
            # recipients already accepted included: no DATA will follow.
            self.accepted.clear()
            self.ledger.abandon(answer)

    async def data(self, answer: Reply, started: float, *, sendable: bool) -> None:
        """Step 5 from DATA's first reply on: the message after a 354, then the final reply."""
        ledger, wire = self.ledger, self.wire
        if not sendable or not self.accepted:
            if answer.code == Code.START_INPUT:
                # Pipelined DATA a server accepted after refusing MAIL FROM or every RCPT TO:
                # hang up rather than end an empty message with a dot.
                wire.abort("DATA accepted with nobody to send to")
                ledger.lost = True
            return
        if answer.code == Code.START_INPUT and wire.heard_more:
            # More than the 354 came: it may be the real reply to DATA, a refusal.
            ledger.steps.pop()
            answer = _out_of_step(ledger, wire, "DATA", f"more than {answer} came", started)
        elif answer.code == Code.START_INPUT:
            ledger.steps.pop()  # one DATA step, with the reply after the dot
            written = wire.send(message_bytes(self.message.data), 1)
            # The dot left only if the server kept reading (RFC 5321 §4.5.3.2.5's data block).
            ledger.body_sent = written and await wire.drain(self.timeouts.data_block)
            awaited = Awaited("DATA", started, self.timeouts.data, last=True)
            answer = await read_reply(ledger, wire, awaited)
            if ledger.lost and ledger.body_sent:
                answer = ambiguous(answer)  # the dot may have arrived unanswered
        for recipient in self.accepted:
            ledger.replies[recipient] = answer
