"""SMTP framing, both ways: replies taken off the bytes a server sent (RFC 5321 §4.2: a code,
continuation lines marked by "-"), and commands and the message as they go on the wire."""

from __future__ import annotations

from dataclasses import dataclass

from workers.model.reply import printable

MAX_LINE = 8192  # RFC 5321 §4.5.3.1.5 allows 512 octets for a reply line; be lenient
MAX_BUFFER = 4 * MAX_LINE  # a reply (continuation lines included) longer than this is garbage
_EXCERPT = 80  # how much of a garbled line a reason quotes


@dataclass(frozen=True, slots=True)
class WireReply:
    """One reply as the server sent it: its code, its lines joined by newlines, and when it
    was complete (`time.perf_counter()`)."""

    code: int
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class NotAReply:
    """Bytes that are no reply: the reply stream cannot be trusted any more."""

    reason: str


def take_reply(buffer: bytearray, at: float) -> WireReply | NotAReply | None:
    """Take one complete reply, complete at `at`, off the front of `buffer`; None when it holds
    none yet (nothing is taken then)."""
    offset = 0
    lines: list[str] = []
    while True:
        end = buffer.find(b"\n", offset)
        if end < 0:
            return None
        line = bytes(buffer[offset:end]).rstrip(b"\r")
        offset = end + 1
        code = line[:3]
        if (
            not code.isdigit()
            or not b"200" <= code <= b"599"  # RFC 5321 §4.2: SMTP has no 1yz, nor 6yz on
            or len(line) > MAX_LINE
            or line[3:4] not in (b"", b" ", b"-")
        ):
            return NotAReply(f"not a reply: {excerpt(line)}")
        lines.append(line[4:].strip().decode("utf-8", "surrogateescape"))
        if line[3:4] != b"-":
            del buffer[:offset]
            return WireReply(int(code), "\n".join(lines), at)


def excerpt(data: bytes | bytearray) -> str:
    """The start of `data`, printable, for a reason to quote."""
    return printable(bytes(data[:_EXCERPT]).decode("utf-8", "surrogateescape"), _EXCERPT)


def command_line(command: str, smtputf8: bool) -> bytes | None:
    """`command` as one CRLF-terminated line, or None when it must not be sent as is
    (a control character, or non-ASCII without SMTPUTF8)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in command):
        return None  # CR, LF or NUL would smuggle another command in
    try:
        return command.encode("utf-8" if smtputf8 else "ascii") + b"\r\n"
    except UnicodeEncodeError:
        return None


def message_bytes(data: bytes) -> bytes:
    """`data` as it goes on the wire after DATA: CRLF line ends, dot-stuffed, then ".".

    RFC 5321 §4.5.2: a line starting with "." gets another; lone CR or LF become CRLF, as
    aiosmtplib does (bytes.replace: a 2 KB message costs microseconds, not a regex pass).
    """
    bare = data.replace(b"\r\n", b"")
    if b"\r" in bare or b"\n" in bare:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\n.", b"\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"
