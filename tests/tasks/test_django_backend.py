"""tasks.django.EmailBackend in a minimal Django project (tests/django_site): `send_mail` and
`EmailMultiAlternatives` go through `notify_many` into the test Redis, a real Celery worker
delivers them to an aiosmtpd sink, and the test reads what the sink received."""

from __future__ import annotations

import email
import email.policy
import os
from collections.abc import Iterator
from email.message import EmailMessage as ParsedMessage
from email.mime.image import MIMEImage
from typing import Any

import django
import pytest
import redis
from django.core import mail
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.test import override_settings

from settings import SettingsError
from tasks import api
from tasks.django import EmailBackend, notification_of
from tasks.notification import InvalidNotification
from tests.support.redis_server import RedisServer
from tests.support.smtp_sink import MakeSink
from tests.tasks.conftest import Deploy
from tests.tasks.pipeline_support import SHARDS, running_worker, wait_for
from workers.queue.content import ContentStore
from workers.queue.status import StatusStore

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture(scope="module", autouse=True)
def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_site.settings")
    django.setup()


@pytest.fixture
def mailroom_setting(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[None]:
    """The `MAILROOM` Django setting of a project on the test Redis (flushed)."""
    with override_settings(MAILROOM={"REDIS_URL": redis_server.url, "SHARDS": SHARDS}):
        yield


def parsed(content: bytes) -> ParsedMessage:
    return email.message_from_bytes(content, policy=email.policy.default)


@pytest.mark.usefixtures("mailroom_setting")
def test_send_mail_and_a_batch_with_attachments_reach_the_sink(
    redis_client: redis.Redis, mx_port: int, deploy: Deploy, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    _settings, app, _mailroom = deploy()

    assert mail.send_mail("Welcome", "Hello Zoë", None, ["zoe@implicit.test"]) == 1

    invoice = EmailMultiAlternatives(
        subject="Your invoice",
        body="Your invoice is attached.",
        from_email="Billing <billing@example.test>",
        to=["Max <max@implicit.test>"],
        cc=["accounts@implicit.test"],
        bcc=["audit@implicit.test"],
        reply_to=["Help <help@example.test>"],
        headers={"X-Order": "12345"},
    )
    invoice.attach_alternative('<p>Your invoice <img src="cid:logo@example.test"></p>', "text/html")
    invoice.attach("Rechnung März.pdf", PDF, "application/pdf")
    invoice.attach("lines.csv", "article;price\nTee;3,50 €\n", "text/csv")
    logo = MIMEImage(PNG, "png")
    logo.add_header("Content-ID", "<logo@example.test>")
    logo.add_header("Content-Disposition", "inline", filename="logo.png")
    invoice.attach(logo)
    note = EmailMessage("A note", "<p>html only</p>", to=["max@implicit.test"])
    note.content_subtype = "html"
    with mail.get_connection() as connection:
        assert connection.send_messages([invoice, note]) == 2
    ids = [str(getattr(invoice, "mailroom_id", "")), str(getattr(note, "mailroom_id", ""))]
    assert all(len(i) == 32 for i in ids)

    with running_worker(app):
        wait_for(lambda: len(sink.messages) == 3, what="three messages")
    received = {str(parsed(m.content)["Subject"]): m for m in sink.messages}
    assert set(received) == {"Welcome", "Your invoice", "A note"}

    welcome = parsed(received["Welcome"].content)
    assert welcome["From"].addresses[0].addr_spec == "shop@example.test"  # DEFAULT_FROM_EMAIL
    assert welcome.get_content() == "Hello Zoë\r\n"

    message = received["Your invoice"]
    assert sorted(message.rcpt_tos) == [
        "accounts@implicit.test",
        "audit@implicit.test",
        "max@implicit.test",
    ]
    assert message.message_id == f"<{ids[0]}@example.test>"
    assert b"audit@" not in message.content  # Bcc stays blind
    body = parsed(message.content)
    assert body["X-Order"] == "12345"
    assert body["Reply-To"].addresses[0].addr_spec == "help@example.test"
    assert [p.get_content_type() for p in body.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
        "text/csv",
    ]
    files = {part.get_filename(): part for part in body.iter_attachments()}
    assert files["Rechnung März.pdf"].get_content() == PDF
    assert files["lines.csv"].get_payload(decode=True) == "article;price\nTee;3,50 €\n".encode()
    [image] = [part for part in body.walk() if part["Content-ID"] == "<logo@example.test>"]
    assert (image.get_filename(), image.get_content()) == ("logo.png", PNG)

    note_body = parsed(received["A note"].content)
    assert note_body.get_content_type() == "text/html"
    status = StatusStore(redis_client, ttl=60)
    for message_id in ids:
        view = status.view(message_id)
        assert view is not None
        assert {r["state"] for r in view["recipients"]} == {"delivered"}


@pytest.mark.usefixtures("mailroom_setting")
def test_a_message_id_header_is_the_idempotency_key(redis_client: redis.Redis) -> None:
    def message() -> EmailMessage:
        headers = {"Message-ID": "<order-42@shop.example.test>"}
        return EmailMessage("Order 42", "shipped", to=["zoe@implicit.test"], headers=headers)

    first, again = message(), message()
    assert mail.get_connection().send_messages([first]) == 1
    assert mail.get_connection().send_messages([again]) == 1
    assert getattr(first, "mailroom_id") == getattr(again, "mailroom_id")  # noqa: B009
    keyed = EmailMessage("Order 43", "x", to=["zoe@implicit.test"])
    keyed.mailroom_idempotency_key = "order-43"  # type: ignore[attr-defined]
    twice = EmailMessage("Order 43", "x", to=["zoe@implicit.test"])
    twice.mailroom_idempotency_key = "order-43"  # type: ignore[attr-defined]
    assert mail.get_connection().send_messages([keyed, twice]) == 2
    assert getattr(keyed, "mailroom_id") == getattr(twice, "mailroom_id")  # noqa: B009
    content = ContentStore(redis_client, ttl=60)
    stored = content.get(getattr(first, "mailroom_id"))  # noqa: B009
    assert stored is not None
    assert b"order-42@shop" not in stored.data  # Mailroom writes its own Message-ID
    assert len(redis_client.keys("mailroom:content:*")) == 2


@pytest.mark.usefixtures("mailroom_setting")
@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda: EmailMessage("Hi", "x", to=["bob@"]),
            r"^notifications\[1\]\.to\[0\]: 'bob@' is not a valid",
        ),
        (
            lambda: EmailMessage("Hi", "x", to=["a@implicit.test"], headers={"Date": "now"}),
            r"^notifications\[1\]\.headers\['Date'\]: Mailroom writes this header itself",
        ),
        (
            lambda: _with_file("../etc/passwd"),
            r"^notifications\[1\]\.attachments\[0\]\.filename: '\.\./etc/passwd'",
        ),
    ],
)
def test_invalid_input_raises_or_returns_0_when_silent(
    redis_client: redis.Redis, make: Any, expected: str
) -> None:
    good = EmailMessage("Fine", "x", to=["a@implicit.test"])
    with pytest.raises(InvalidNotification, match=expected):
        mail.get_connection().send_messages([good, make()])
    assert mail.get_connection(fail_silently=True).send_messages([good, make()]) == 0
    assert redis_client.dbsize() == 0  # the good one of the batch was not queued either


def _with_file(filename: str) -> EmailMessage:
    message = EmailMessage("Hi", "x", to=["a@implicit.test"])
    message.attach(filename, b"root:x:0:0", "text/plain")
    return message


def test_a_bad_mailroom_setting_is_a_settings_error_or_0_when_silent() -> None:
    with override_settings(MAILROOM={"SHARDS": "many"}):
        with pytest.raises(SettingsError, match="MAILROOM_SHARDS"):
            mail.send_mail("Hi", "x", None, ["a@implicit.test"])
        assert mail.send_mail("Hi", "x", None, ["a@implicit.test"], fail_silently=True) == 0


def test_without_the_setting_the_environment_configures_the_producer(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILROOM_REDIS_URL", redis_server.url)
    api.default.cache_clear()
    try:
        assert mail.send_mail("From the environment", "x", None, ["a@implicit.test"]) == 1
    finally:
        api.default.cache_clear()
    [key] = redis_client.keys("mailroom:content:*")
    name = key.decode() if isinstance(key, bytes) else str(key)
    stored = ContentStore(redis_client, ttl=60).get(name.rpartition(":")[2])
    assert stored is not None
    assert b"Subject: From the environment\r\n" in stored.data


def test_an_empty_list_sends_nothing_and_needs_no_redis() -> None:
    with override_settings(MAILROOM={"REDIS_URL": "redis://127.0.0.1:1/0"}):
        assert EmailBackend().send_messages([]) == 0


def test_conversion_of_django_messages() -> None:
    message = EmailMultiAlternatives("S", "", to=["a@implicit.test"])
    message.attach_alternative("<p>only html</p>", "text/html")
    message.attach(MIMEImage(PNG, "png"))  # no file name, no Content-ID: a plain attachment
    fields = notification_of(message)
    assert (fields["text"], fields["html"]) == (None, "<p>only html</p>")
    [image] = fields["attachments"]
    assert image == {"filename": "attachment-1.png", "content": PNG, "content_type": "image/png"}

    other = EmailMultiAlternatives("S", "text", to=["a@implicit.test"])
    other.attach_alternative("{}", "application/json")
    with pytest.raises(InvalidNotification, match=r"^alternatives\[0\]: only one text/html"):
        notification_of(other)


def test_extra_headers_from_and_reply_to_win_as_in_django() -> None:
    message = EmailMessage(
        "S",
        "x",
        from_email="envelope@example.test",
        to=["a@implicit.test"],
        reply_to=["ignored@example.test"],
        headers={"From": "Shown <shown@example.test>", "Reply-To": "help@example.test"},
    )
    fields = notification_of(message)
    assert fields["sender"] == "Shown <shown@example.test>"
    assert (fields["reply_to"], fields["headers"]) == ([], {"Reply-To": "help@example.test"})


def test_tags_and_metadata_come_from_attributes() -> None:
    message = EmailMessage("S", "x", to=["a@implicit.test"])
    assert (notification_of(message)["tags"], notification_of(message)["metadata"]) == ([], {})
    message.mailroom_tags = ("invoice",)  # type: ignore[attr-defined]
    message.mailroom_metadata = {"order": "42"}  # type: ignore[attr-defined]
    fields = notification_of(message)
    assert (fields["tags"], fields["metadata"]) == (["invoice"], {"order": "42"})


@pytest.mark.usefixtures("mailroom_setting")
def test_bad_tags_are_refused_like_any_field(redis_client: redis.Redis) -> None:
    message = EmailMessage("S", "x", to=["a@implicit.test"])
    message.mailroom_tags = ["a\nb"]  # type: ignore[attr-defined]
    with pytest.raises(InvalidNotification, match=r"^tags\[0\]: "):
        mail.get_connection().send_messages([message])
    assert redis_client.dbsize() == 0
