"""Every reply the submission listener sends carries an RFC 3463 enhanced status code.

The listener's own replies are the constants below. aiosmtpd writes some replies of its own
without an enhanced code (a SIZE refusal, a syntax error, "Must issue a STARTTLS command first");
`enhance` adds one to each such line on its way out, choosing it from the reply code and, where
one code covers several cases, from the text. Lines that must stay as they are pass through: the
greeting, EHLO's lines, 334 AUTH challenges and 354. RFC 2034 asks for enhanced codes on every
other reply once ENHANCEDSTATUSCODES is announced, which the listener does.
"""

from __future__ import annotations

import re

# Positive replies.
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
QUEUED = "250 2.0.0 Ok: queued as {message_id}"
BYE = "221 2.0.0 Bye"
OK = "250 2.0.0 OK"
VRFY_CANNOT = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
# Authentication (RFC 4954 §6).
AUTH_REQUIRED = "530 5.7.0 Authentication required"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure, try again later"
TOO_MANY_FAILURES = "421 4.7.0 Too many failed logins from your address, try again later"
# Connection caps (sent instead of the greeting, then the connection is closed).
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address, try again later"
# Envelope.
BAD_SENDER = "553 5.1.7 Bad sender address syntax"
SENDER_NOT_ALLOWED = "553 5.7.1 Sender address not allowed for this account"
BAD_RECIPIENT = "553 5.1.3 Bad recipient address syntax"
UTF8_NEEDED = "553 5.6.7 Non-ASCII address needs MAIL FROM with SMTPUTF8"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
# Message.
# Printable by construction: the problem names the field and a limit, never the value.
BAD_LABELS = "554 5.6.0 {problem}"
QUEUE_UNAVAILABLE = "451 4.3.0 Queue unavailable, message not accepted, try again later"
LOCAL_ERROR = "451 4.3.0 Local error in processing, try again later"
SHUTTING_DOWN = "421 4.3.2 System shutting down, try again later"

_HAS_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")
_FINAL_LINE = re.compile(r"([2-5][0-9][0-9]) (.*)", re.DOTALL)

# aiosmtpd's own lines that are rewritten whole, for a clearer text as well as the code.
_REWRITTEN = {
    "552 Error: Too much mail data": "552 5.3.4 Message too big for system",
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ),
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "250 OK": OK,
    "221 Bye": BYE,
}
# (code, start of text) → enhanced code, before the per-code default below.
_BY_TEXT = (
    ("500", "Error: command", "5.5.1"),  # unrecognised command
    ("501", "Error: BODY", "5.5.4"),  # bad parameter value
    ("501", "Error: SMTPUTF8", "5.5.4"),
)
_BY_CODE = {
    "421": "4.3.0",
    "451": "4.3.0",
    "454": "4.7.0",  # RFC 3207: TLS not available
    "500": "5.5.2",  # syntax error, line too long
    "501": "5.5.2",
    "502": "5.5.1",
    "503": "5.5.1",  # bad sequence of commands
    "504": "5.5.4",
    "530": "5.7.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",  # refused: the TLS handshake failed
    "555": "5.5.4",  # MAIL/RCPT parameters not recognised
}


def enhance(line: str) -> str:
    """`line` with an enhanced status code, if it is a reply that needs one and lacks it."""
    rewritten = _REWRITTEN.get(line)
    if rewritten is not None:
        return rewritten
    match = _FINAL_LINE.fullmatch(line)
    if match is None or match[1][0] not in "45" or _HAS_ENHANCED.match(match[2]):
        return line
    code, text = match[1], match[2]
    enhanced = next(
        (value for c, start, value in _BY_TEXT if c == code and text.startswith(start)),
        _BY_CODE.get(code, f"{code[0]}.0.0"),
    )
    return f"{code} {enhanced} {text}"
