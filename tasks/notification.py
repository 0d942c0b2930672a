"""The Notification model: the producer API's fields, validated once at the edge.

`Notification` holds exactly the keyword arguments of `notify()` and of the `mailroom.notify` task.
Validation is strict where a mistake would reach a mail server or a header: addresses follow
RFC 5321/5322 (dot-atom or quoted local part, RFC 6531 non-ASCII local parts, domains that convert
to IDNA A-labels, RFC 5321 §4.5.3.1 lengths), and no header value may carry a line break, so no
input can inject a header. Attachments are checked by tasks.attachments (file names that cannot
lead a reader out of its folder, media types, Content-IDs). Every failure is an
`InvalidNotification` whose one line names the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tasks.addresses import Mailbox, a_label_domain, parse_mailbox
from tasks.attachments import Attachment, parse_attachment
from tasks.header_text import (
    LINE_LIMIT,
    MAX_HEADER_CHARS,
    STRUCTURAL_HEADERS,
    STRUCTURED_FIELDS,
    InvalidNotification,
    check_extra_header,
    check_header_text,
)
from tasks.labels import check_metadata, check_tags, labels_json
from tasks.list_unsubscribe import check_one_click, check_uris, list_fields

__all__ = [
    "LINE_LIMIT",
    "MAX_HEADER_CHARS",
    "STRUCTURAL_HEADERS",
    "STRUCTURED_FIELDS",
    "Attachment",
    "InvalidNotification",
    "Mailbox",
    "Notification",
    "a_label_domain",
    "check_header_text",
    "parse_mailbox",
]

MAX_IDEMPOTENCY_KEY_CHARS = 256
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a lone surrogate has no UTF-8 form


def _parse_all(field: str, values: list[str]) -> tuple[Mailbox, ...]:
    return tuple(parse_mailbox(f"{field}[{index}]", value) for index, value in enumerate(values))


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part!r}]" if text else str(part)
    return text or "notification"


@dataclass(frozen=True, slots=True)
class _Parsed:
    """The addresses of a valid Notification, parsed once by its validator."""

    sender: Mailbox
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    reply_to: tuple[Mailbox, ...]
    recipients: tuple[str, ...]  # to + cc + bcc as bare addresses, each once, in order
    smtputf8: bool  # some address has a non-ASCII local part


class Notification(BaseModel):
    """One notification as a producer gives it (docs/contract.md, "Python API"); frozen once
    valid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sender: str
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    reply_to: list[str] = Field(default_factory=list)  # one address may be given as a str
    # Mappings (or Attachment values) as given; validated into Attachment values, kept here.
    attachments: list[Any] = Field(default_factory=list)
    # Any, not str: a value of another type gets the same one line as a bad string.
    tags: list[Any] = Field(default_factory=list)
    metadata: dict[Any, Any] = Field(default_factory=dict)
    # RFC 2369 / RFC 8058 (tasks/list_unsubscribe.py): an https: or mailto: URI, or one of each.
    list_unsubscribe: str | list[str] | None = None
    one_click: bool = Field(default=False, strict=True)

    _parsed: _Parsed = PrivateAttr()
    _labels: str = PrivateAttr(default="")

    @classmethod
    def validate_dict(cls, data: Mapping[str, Any]) -> Self:
        """Validate producer input; raise InvalidNotification with one line naming the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, InvalidNotification):
                raise InvalidNotification(str(cause)) from None
            message = {"missing": "is required", "extra_forbidden": "is not a known field"}.get(
                error["type"], error["msg"]
            )
            raise InvalidNotification(f"{_location(error['loc'])}: {message}") from None

    @field_validator("reply_to", mode="before")
    @classmethod
    def _one_reply_to(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        check_header_text("subject", value)
        return value

    @field_validator("text", "html")
    @classmethod
    def _check_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not value or value.isspace():  # a notification nobody can read is a producer's bug
            raise InvalidNotification(f"{info.field_name}: is empty or only whitespace")
        # RFC 5322 §2.3 text excludes NUL; checked with `in` first because bodies may be large.
        if "\x00" in value:
            raise InvalidNotification(f"{info.field_name}: contains U+0000")
        if not value.isascii() and (bad := _SURROGATE.search(value)):
            raise InvalidNotification(f"{info.field_name}: contains U+{ord(bad[0]):04X}")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, text in value.items():
            if name.lower() in seen:
                raise InvalidNotification(f"headers[{name!r}]: given twice (names ignore case)")
            seen.add(name.lower())
            check_extra_header(name, text)
        return value

    @field_validator("attachments")
    @classmethod
    def _check_attachments(cls, value: list[Any]) -> list[Attachment]:
        parsed = [parse_attachment(f"attachments[{i}]", item) for i, item in enumerate(value)]
        seen: set[str] = set()
        for index, attachment in enumerate(parsed):
            if attachment.content_id is not None:
                if attachment.content_id in seen:
                    raise InvalidNotification(f"attachments[{index}].content_id: given twice")
                seen.add(attachment.content_id)
        return parsed

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[Any]) -> list[Any]:
        return check_tags(value)

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[Any, Any]) -> dict[Any, Any]:
        return check_metadata(value)

    @field_validator("idempotency_key")
    @classmethod
    def _check_idempotency_key(cls, value: str | None) -> str | None:
        if value is not None:
            if not value:
                raise InvalidNotification("idempotency_key: is empty")
            if len(value) > MAX_IDEMPOTENCY_KEY_CHARS:
                raise InvalidNotification(
                    f"idempotency_key: longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters"
                )
            check_header_text("idempotency_key", value)
        return value

    @field_validator("list_unsubscribe")
    @classmethod
    def _check_list_unsubscribe(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None:
            check_uris(value)
        return value

    @model_validator(mode="after")
    def _check_addresses(self) -> Self:
        # Addresses are parsed here rather than in field validators so each is parsed once and
        # the typed result kept; field errors (types, subject, headers) are reported first.
        sender = parse_mailbox("sender", self.sender)
        to, cc = _parse_all("to", self.to), _parse_all("cc", self.cc)
        bcc = _parse_all("bcc", self.bcc)
        reply_to = _parse_all("reply_to", self.reply_to)
        if reply_to and any(name.lower() == "reply-to" for name in self.headers):
            raise InvalidNotification("reply_to: Reply-To is also given in headers")
        everyone = (sender, *to, *cc, *bcc)
        self._parsed = _Parsed(
            sender=sender,
            to=to,
            cc=cc,
            reply_to=reply_to,
            recipients=tuple(dict.fromkeys(box.address for box in everyone[1:])),
            # A Reply-To address with a non-ASCII local part makes the header block UTF-8.
            smtputf8=any(box.smtputf8 for box in (*everyone, *reply_to)),
        )
        if not (self.to or self.cc or self.bcc):
            raise InvalidNotification("to: no recipient (to, cc and bcc are all empty)")
        if self.text is None and self.html is None:
            raise InvalidNotification("text: neither text nor html is given")
        uris = self.unsubscribe_uris()
        check_one_click(uris, self.one_click)
        if uris:
            for name in self.headers:
                if name.lower() in ("list-unsubscribe", "list-unsubscribe-post"):
                    raise InvalidNotification(
                        f"headers[{name!r}]: list_unsubscribe writes this header (give one)"
                    )
        if self.html is None:
            for index, attachment in enumerate(self.attachment_list):
                if attachment.inline:
                    raise InvalidNotification(
                        f"attachments[{index}].inline: needs an html body to show it (cid:)"
                    )
        self._labels = labels_json(self.tags, self.metadata)
        return self

    def unsubscribe_uris(self) -> tuple[str, ...]:
        """The List-Unsubscribe URIs given, in order (none: an empty tuple)."""
        value = self.list_unsubscribe
        if value is None:
            return ()
        return (value,) if isinstance(value, str) else tuple(value)

    def list_header_fields(self) -> list[tuple[str, str]]:
        """List-Unsubscribe and List-Unsubscribe-Post as (name, value), when asked for."""
        return list_fields(self.unsubscribe_uris(), self.one_click)

    @property
    def sender_mailbox(self) -> Mailbox:
        """The sender, parsed."""
        return _parsed(self).sender

    @property
    def to_mailboxes(self) -> tuple[Mailbox, ...]:
        """The To recipients, parsed, in the order given."""
        return _parsed(self).to

    @property
    def cc_mailboxes(self) -> tuple[Mailbox, ...]:
        """The Cc recipients, parsed, in the order given."""
        return _parsed(self).cc

    @property
    def attachment_list(self) -> list[Attachment]:
        """The attachments, validated, in the order given (inline parts among them)."""
        attachments: list[Attachment] = self.attachments
        return attachments

    @property
    def reply_to_mailboxes(self) -> tuple[Mailbox, ...]:
        """The Reply-To addresses, parsed, in the order given (none when not given)."""
        return _parsed(self).reply_to

    def envelope_sender(self) -> str:
        """The bare sender address for MAIL FROM."""
        return _parsed(self).sender.address

    def envelope_recipients(self) -> list[str]:
        """to + cc + bcc as bare addresses for RCPT TO, each once, in the order first given.

        Domains are lower-case (A-labels for ASCII local parts), so two spellings of one domain
        count as one recipient; local parts stay case-sensitive (RFC 5321 §2.4).
        """
        return list(_parsed(self).recipients)

    def labels(self) -> str:
        """Tags and metadata as the status record keeps them (JSON; "" when there are none)."""
        return self._labels

    def needs_smtputf8(self) -> bool:
        """True when the sender, a recipient or a Reply-To address has a non-ASCII local part
        (RFC 6531)."""
        return _parsed(self).smtputf8


def _parsed(notification: Notification) -> _Parsed:
    # pydantic serves private attributes through __getattr__, a few microseconds a read, and
    # the producer reads these several times per message; the dict behind them is a plain
    # attribute.
    private = notification.__pydantic_private__
    assert private is not None  # the model has private attributes, so pydantic set the dict
    parsed: _Parsed = private["_parsed"]
    return parsed
