"""One mail transaction on an open connection: steps 3 to 5 (MAIL FROM, RCPT TO, DATA).

With the server's PIPELINING (RFC 2920 §3.1) every command up to DATA goes out in one write (RSET
first on a reused connection) and the replies are read in order; without it, one command per
reply, and nothing is sent that an earlier reply made pointless. The message itself only follows
a 354, so a transaction whose MAIL FROM or every RCPT TO failed never sends it. Which recipient a
failure applies to follows Postfix's `smtp_trouble.c`: MAIL FROM and DATA failures hit every
recipient still in play, a RCPT refusal that recipient only.
"""

from __future__ import annotations

import time

from workers import reply as replies
from workers.connection_pool import Connection
from workers.envelope import OutboundMessage
from workers.rate_limits import is_throttling
from workers.reply import Code, Reply, Step, parse_reply
from workers.smtp_record import Ledger, Timeouts, ambiguous
from workers.smtp_wire import NoReply, Wire, message_bytes

_STEPS = {
    "RSET": Step.OPEN_SESSION,
    "MAIL FROM": Step.MAIL_FROM,
    "RCPT TO": Step.RCPT_TO,
    "DATA": Step.DATA,
    "QUIT": Step.QUIT,
}

Command = tuple[str, bytes, str | None]  # verb, the line to send, the recipient of a RCPT TO


async def transaction(
    ledger: Ledger,
    connection: Connection,
    message: OutboundMessage,
    timeouts: Timeouts,
    *,
    reset: bool,
    probe: bool,
) -> bool:
    """Run one transaction on `connection`, recording into `ledger`; a reused connection
    (`reset`) gets RSET first. A `probe` stops after RCPT TO: each accepted recipient's reply
    is its RCPT reply.

    False when RSET failed: the caller drops the connection (and with it whatever was
    pipelined), and nothing of this message reached the server.
    """
    return await _Transaction(ledger, connection, message, timeouts).run(reset=reset, probe=probe)


async def read_reply(
    ledger: Ledger, wire: Wire, verb: str, started: float, timeout: float
) -> Reply:
    """The next reply from `wire`, recorded as `verb`'s; a made-up one if none came."""
    ledger.step = _STEPS[verb]
    got = await wire.read(timeout)
    if isinstance(got, NoReply):
        ledger.lost = True
        answer = replies.connection_dropped(ledger.host, ledger.step, got.reason)
        ledger.record(verb, answer, started)
        return answer
    answer = parse_reply(got.code, got.text, ledger.step)
    if answer.reply_class > 3:
        ledger.throttled = ledger.throttled or is_throttling(answer.code, answer.enhanced)
    ledger.record(verb, answer, started, got.at)
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
            answer = await read_reply(ledger, wire, verb, started, self.timeouts.command)
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
        sender = self.line(f"MAIL FROM:<{self.message.sender}>{''.join(options)}")
        if sender is None:
            return replies.bad_address(Step.MAIL_FROM)
        commands: list[Command] = []
        if reset:
            commands.append(("RSET", b"RSET\r\n", None))
        commands.append(("MAIL FROM", sender, None))
        for recipient in self.ledger.recipients:
            line = self.line(f"RCPT TO:<{recipient}>")
            if line is None:
                self.ledger.replies[recipient] = replies.bad_address(Step.RCPT_TO)
            else:
                commands.append(("RCPT TO", line, recipient))
        if not probe:
            commands.append(("DATA", b"DATA\r\n", None))
        return commands

    def line(self, command: str) -> bytes | None:
        """`command` as one CRLF-terminated line, or None when it must not be sent as is
        (a control character, or non-ASCII without SMTPUTF8)."""
        if any(ord(c) < 32 or ord(c) == 127 for c in command):
            return None  # CR, LF or NUL would smuggle another command in
        try:
            return command.encode("utf-8" if self.message.smtputf8 else "ascii") + b"\r\n"
        except UnicodeEncodeError:
            return None

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
        if answer.code == Code.START_INPUT:
            ledger.steps.pop()  # one DATA step, with the reply after the dot
            wire.send(message_bytes(self.message.data), 1)
            ledger.body_sent = True
            await wire.drain()
            answer = await read_reply(ledger, wire, "DATA", started, self.timeouts.data)
            if ledger.lost:
                answer = ambiguous(answer)  # the dot may have arrived unanswered
        for recipient in self.accepted:
            ledger.replies[recipient] = answer
