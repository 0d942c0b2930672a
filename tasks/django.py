"""Django's e-mail backend through Mailroom: `EMAIL_BACKEND = "tasks.django.EmailBackend"`.

`send_messages()` turns each `EmailMessage` (or `EmailMultiAlternatives`) into a notification:
from, to, cc, bcc, reply_to, subject, body, the HTML alternative, attachments (tuples and
`MIMEBase` parts, inline ones with a Content-ID included) and extra headers; the whole list goes
through one `notify_many`, so a batch costs a few Redis round trips and a retry with the same
key sends nothing twice. An `extra_headers["Message-ID"]`, or a `mailroom_idempotency_key`
attribute, becomes the idempotency key (Mailroom writes its own Message-ID); `mailroom_tags` and
`mailroom_metadata` attributes become the tags and metadata its events carry; each message gets
its Mailroom id as `mailroom_id`, for `mailroom status`.

The producer's settings come from the Django setting `MAILROOM` (a dict of the MAILROOM_*
names without the prefix, e.g. `{"REDIS_URL": …}`), over the MAILROOM_* environment variables;
without it, from the environment alone. One `Mailroom` is kept per distinct `MAILROOM`, because
Django builds a backend for every `send_mail()`.
"""

from __future__ import annotations

import functools
import json
import logging
import mimetypes
from collections.abc import Mapping, Sequence
from email.mime.base import MIMEBase
from typing import Any

import redis
from django.conf import settings as django_settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage

from settings import SettingsError, load_settings
from tasks.api import Mailroom, default
from tasks.notification import InvalidNotification

__all__ = ["EmailBackend", "notification_of"]

log = logging.getLogger(__name__)

IDEMPOTENCY_ATTRIBUTE = "mailroom_idempotency_key"
TAGS_ATTRIBUTE = "mailroom_tags"
METADATA_ATTRIBUTE = "mailroom_metadata"
ID_ATTRIBUTE = "mailroom_id"


class EmailBackend(BaseEmailBackend):
    """Queues Django's messages with Mailroom; `send_messages` returns how many were accepted.

    Bad input raises `InvalidNotification` (nothing of the batch is queued), a bad `MAILROOM`
    setting `settings.SettingsError`, an unreachable Redis `redis.RedisError`; with
    `fail_silently=True` each of these is logged and 0 returned.
    """

    def __init__(
        self, fail_silently: bool = False, *, mailroom: Mailroom | None = None, **kwargs: Any
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self._mailroom = mailroom

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        messages = list(email_messages)
        if not messages:
            return 0
        try:
            notifications = [_converted(index, message) for index, message in enumerate(messages)]
            ids = (self._mailroom or _producer()).notify_many(notifications)
        except (InvalidNotification, SettingsError, redis.RedisError) as exc:
            if not self.fail_silently:
                raise
            # The one line names a field or setting; addresses may be in it, bodies never.
            log.warning("Mailroom refused %d Django message(s): %s", len(messages), exc)
            return 0
        for message, message_id in zip(messages, ids, strict=True):
            setattr(message, ID_ATTRIBUTE, message_id)
        return len(ids)


def notification_of(message: EmailMessage) -> dict[str, Any]:
    """The `notify()` fields of a Django message (validated by `notify_many`, not here)."""
    headers = dict(message.extra_headers)
    sender = _pop(headers, "From") or str(message.from_email)
    idempotency_key = getattr(message, IDEMPOTENCY_ATTRIBUTE, None)
    message_id = _pop(headers, "Message-ID")
    if idempotency_key is None and message_id is not None:
        idempotency_key = message_id
    text, html = _bodies(message)
    # Django writes an extra Reply-To header in place of `reply_to`; so does Mailroom.
    has_reply_to = any(str(name).lower() == "reply-to" for name in headers)
    return {
        "sender": sender,
        "to": [str(address) for address in message.to],
        "cc": [str(address) for address in message.cc],
        "bcc": [str(address) for address in message.bcc],
        "reply_to": [] if has_reply_to else [str(address) for address in message.reply_to],
        "subject": str(message.subject),
        "text": text,
        "html": html,
        "headers": {str(name): str(value) for name, value in headers.items()},
        "idempotency_key": idempotency_key,
        "attachments": [_attachment(index, a) for index, a in enumerate(message.attachments)],
        "tags": list(getattr(message, TAGS_ATTRIBUTE, ())),
        "metadata": dict(getattr(message, METADATA_ATTRIBUTE, {})),
    }


def _converted(index: int, message: EmailMessage) -> dict[str, Any]:
    """`notification_of`, its errors prefixed with the index as `notify_many` does."""
    try:
        return notification_of(message)
    except InvalidNotification as exc:
        if index == 0:
            raise
        raise InvalidNotification(f"notifications[{index}].{exc}") from exc


def _pop(headers: dict[str, Any], name: str) -> str | None:
    for key in list(headers):
        if key.lower() == name.lower():
            return str(headers.pop(key))
    return None


def _bodies(message: EmailMessage) -> tuple[str | None, str | None]:
    """(text, html): the body by its subtype, and the one text/html alternative."""
    body = str(message.body)  # a lazy translation, perhaps
    if message.content_subtype == "html":
        return None, body
    html = None
    for index, (content, mimetype) in enumerate(getattr(message, "alternatives", ())):
        if mimetype != "text/html" or html is not None:
            raise InvalidNotification(
                f"alternatives[{index}]: only one text/html alternative is sent, not {mimetype}"
            )
        html = content.decode() if isinstance(content, bytes) else str(content)
    # send_mail(message="", html_message=…) has no text: HTML alone, not an empty text part.
    return (None if html is not None and not body else body), html


def _attachment(index: int, given: Any) -> dict[str, Any]:
    """One of Django's attachments as a Mailroom attachment mapping."""
    if isinstance(given, MIMEBase):
        return _mime_attachment(index, given)
    filename, content, mimetype = given[0], given[1], given[2]
    if isinstance(content, str):
        content = content.encode()
        if mimetype is not None and mimetype.startswith("text/"):
            mimetype = f"{mimetype}; charset=utf-8"
    return {
        "filename": filename or _unnamed(index, mimetype),
        "content": content,
        "content_type": mimetype,
    }


def _mime_attachment(index: int, part: MIMEBase) -> dict[str, Any]:
    if part.is_multipart():
        raise InvalidNotification(f"attachments[{index}]: a multipart part cannot be attached")
    content = part.get_payload(decode=True)
    if not isinstance(content, bytes):
        raise InvalidNotification(f"attachments[{index}].content: the part has no payload")
    content_type = part.get_content_type()
    if charset := part.get_content_charset():
        content_type = f"{content_type}; charset={charset}"
    content_id = part["Content-ID"]
    inline = content_id is not None and part.get_content_disposition() != "attachment"
    attachment: dict[str, Any] = {
        "filename": part.get_filename() or _unnamed(index, content_type),
        "content": content,
        "content_type": content_type,
    }
    if inline:
        attachment |= {"inline": True, "content_id": str(content_id).strip()}
    return attachment


def _unnamed(index: int, content_type: str | None) -> str:
    """A name for a part given none (Mailroom needs one; readers show it)."""
    kind = (content_type or "").partition(";")[0]
    extension = mimetypes.guess_extension(kind) if kind else None
    return f"attachment-{index + 1}{extension or ''}"


def _producer() -> Mailroom:
    """The Mailroom of the `MAILROOM` Django setting, or the environment's."""
    configured: Mapping[str, Any] | None = getattr(django_settings, "MAILROOM", None)
    if not configured:
        return default()
    if not isinstance(configured, Mapping):
        raise SettingsError("MAILROOM: the Django setting must be a dict of MAILROOM_* names")
    return _producer_for(json.dumps(dict(configured), sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def _producer_for(configured: str) -> Mailroom:
    overrides = {
        str(name).lower().removeprefix("mailroom_"): value
        for name, value in json.loads(configured).items()
    }
    return Mailroom(load_settings(**overrides))
