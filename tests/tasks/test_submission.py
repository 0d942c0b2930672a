"""The submission listener as a client sees it: TLS, AUTH, refusals, and 250 only once queued.

A real listener (`build_server`) on 127.0.0.20 with a trustme certificate, the session's real
redis-server, and smtplib as the client. No Celery worker runs here: what a 250 promises is
checked in Redis (content, status record marked enqueued, a task on the shard queue); the
end-to-end delivery is in test_submission_e2e.py.
"""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from settings import Settings
from tasks.api import Mailroom
from tasks.app import make_celery
from tasks.routing import shard_of, shard_queue
from tasks.submission.auth_limits import AuthFailureLimiter, client_key
from tasks.submission.server import build_server
from tests.support.redis_server import RedisServer, RedisServerFactory
from tests.support.tls_material import TlsMaterial
from tests.tasks.pipeline_support import queued_task_bodies
from tests.tasks.submission_support import (
    HOST,
    OTHER_CLIENT,
    PASSWORD,
    RESTRICTED_PASSWORD,
    RESTRICTED_USER,
    SENDER,
    USER,
    auth_plain,
    connect,
    free_port,
    message,
    running_listener,
    submission_settings,
)
from workers.model.envelope import outbound
from workers.queue.content import ContentStore
from workers.queue.events import EVENTS_KEY
from workers.queue.status import StatusStore
from workers.queue.status_creation import WITHDRAWN


@pytest.fixture
def settings(tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer) -> Settings:
    return submission_settings(tmp_path, tls, redis_server.url)


@pytest.fixture
def listener(settings: Settings, redis_client: redis.Redis) -> Iterator[Settings]:
    """A running listener (on the flushed session Redis); yields its settings."""
    with running_listener(settings):
        yield settings


def login(settings: Settings, tls: TlsMaterial, **options: Any) -> smtplib.SMTP:
    client = connect(settings, tls, **options)
    client.login(USER, PASSWORD)
    return client


def reply_text(reply: tuple[int, bytes]) -> tuple[int, str]:
    return reply[0], reply[1].decode()


def test_plaintext_session_offers_starttls_but_no_auth_and_refuses_auth_and_mail(
    listener: Settings, tls: TlsMaterial
) -> None:
    client = connect(listener, tls, starttls=False)
    assert client.has_extn("starttls")
    assert client.has_extn("size")
    assert not client.has_extn("auth")
    with pytest.raises(smtplib.SMTPNotSupportedError):
        client.login(USER, PASSWORD)  # smtplib itself will not try: AUTH is not offered

    code, text = reply_text(auth_plain(client, USER, PASSWORD))
    assert (code, text.split()[0]) == (530, "5.7.0")
    assert "STARTTLS" in text
    assert reply_text(client.docmd("MAIL", f"FROM:<{SENDER}>"))[1].startswith("5.7.0")
    client.quit()


def test_after_starttls_auth_is_offered_and_mail_needs_it(
    listener: Settings, tls: TlsMaterial
) -> None:
    client = connect(listener, tls)
    assert client.has_extn("enhancedstatuscodes")
    assert set(client.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
    code, text = reply_text(client.docmd("MAIL", f"FROM:<{SENDER}>"))
    assert (code, text) == (530, "5.7.0 Authentication required")
    client.quit()


@pytest.mark.parametrize(
    ("username", "password"),
    [(USER, "wrong password"), ("nobody", PASSWORD), (USER, ""), ("", "x")],
)
def test_bad_credentials_are_535_5_7_8(
    listener: Settings, tls: TlsMaterial, username: str, password: str
) -> None:
    client = connect(listener, tls)
    code, text = reply_text(auth_plain(client, username, password))
    assert (code, text.split()[0]) == (535, "5.7.8")
    # Still not authenticated: nothing can be sent.
    assert client.docmd("MAIL", f"FROM:<{SENDER}>")[0] == 530
    client.quit()


def test_auth_plain_as_another_identity_is_refused(listener: Settings, tls: TlsMaterial) -> None:
    client = connect(listener, tls)
    blob = base64.b64encode(f"{RESTRICTED_USER}\0{USER}\0{PASSWORD}".encode()).decode()
    code, text = reply_text(client.docmd("AUTH", f"PLAIN {blob}"))
    assert (code, text.split()[0]) == (535, "5.7.8")
    blob = base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode()).decode()
    assert client.docmd("AUTH", f"PLAIN {blob}")[0] == 235  # naming oneself is fine
    client.quit()


def test_auth_login_with_challenges_works(listener: Settings, tls: TlsMaterial) -> None:
    client = connect(listener, tls)
    client.user, client.password = USER, PASSWORD
    code, text = reply_text(client.auth("LOGIN", client.auth_login, initial_response_ok=False))
    assert (code, text.split()[0]) == (235, "2.7.0")
    client.quit()


def test_failed_logins_cut_off_the_client_address_across_connections(
    settings: Settings, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    limiter = AuthFailureLimiter(redis_client, max_failures=3, window=600)
    with running_listener(settings, limiter=limiter):
        first = connect(settings, tls)
        assert first.sock is not None
        address = first.sock.getsockname()[0]
        for _ in range(2):
            assert auth_plain(first, USER, "guess")[0] == 535
        second = connect(settings, tls)  # the count is per address, not per connection
        assert auth_plain(second, USER, "guess")[0] == 535

        # The fourth try is refused before its credentials are read, even the right ones.
        code, text = reply_text(auth_plain(first, USER, PASSWORD))
        assert (code, text.split()[0]) == (421, "4.7.0")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            first.noop()  # 421: the listener closed the connection
        third = connect(settings, tls)
        assert auth_plain(third, USER, PASSWORD)[0] == 421

        other = connect(settings, tls, source=OTHER_CLIENT)
        assert auth_plain(other, USER, PASSWORD)[0] == 235
        other.quit()
        second.close()
        third.close()

    key = client_key(address)
    assert int(redis_client.get(key) or 0) == 3
    assert 0 < redis_client.ttl(key) <= 600


def test_auth_while_redis_is_down_is_454_4_7_0(
    tmp_path: Path, tls: TlsMaterial, make_redis_server: RedisServerFactory
) -> None:
    server = make_redis_server()
    settings = submission_settings(tmp_path, tls, server.url)
    with running_listener(settings):
        client = connect(settings, tls)
        server.stop()
        code, text = reply_text(auth_plain(client, USER, PASSWORD))
        assert (code, text.split()[0]) == (454, "4.7.0")
        client.quit()


def test_sender_outside_the_accounts_list_is_553_5_7_1(
    listener: Settings, tls: TlsMaterial
) -> None:
    client = connect(listener, tls)
    client.login(RESTRICTED_USER, RESTRICTED_PASSWORD)
    code, text = reply_text(client.docmd("MAIL", f"FROM:<{SENDER}>"))
    assert (code, text.split()[0]) == (553, "5.7.1")
    assert client.docmd("MAIL", "FROM:<Alerts@Example.TEST>")[0] == 250
    client.rset()
    assert client.docmd("MAIL", "FROM:<pager@ops.example.test>")[0] == 250
    client.rset()
    assert client.docmd("MAIL", "FROM:<pager@sub.ops.example.test>")[0] == 553
    client.quit()


def test_bad_addresses_are_553_with_their_own_codes(listener: Settings, tls: TlsMaterial) -> None:
    client = login(listener, tls)
    assert reply_text(client.docmd("MAIL", "FROM:<no-domain@>"))[1].startswith("5.1.7")
    assert client.docmd("MAIL", f"FROM:<{SENDER}>")[0] == 250
    code, text = reply_text(client.docmd("RCPT", "TO:<zoe@bad_domain.test>"))
    assert (code, text.split()[0]) == (553, "5.1.3")
    client.send("RCPT TO:<zoë@implicit.test>\r\n".encode())  # smtplib's docmd is ASCII only
    code, text = reply_text(client.getreply())
    assert (code, text.split()[0]) == (553, "5.6.7")  # a UTF-8 address without SMTPUTF8
    client.quit()


def test_too_many_recipients_is_452_4_5_3(
    tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = submission_settings(tmp_path, tls, redis_server.url, submission_max_recipients=2)
    with running_listener(settings):
        client = login(settings, tls)
        client.mail(SENDER)
        assert client.rcpt("a@implicit.test")[0] == 250
        assert client.rcpt("b@implicit.test")[0] == 250
        assert client.rcpt("a@implicit.test")[0] == 250  # the same one again costs nothing
        code, text = reply_text(client.rcpt("c@implicit.test"))
        assert (code, text.split()[0]) == (452, "4.5.3")
        code, text = reply_text(client.data(message()))
        assert code == 250, text
        client.quit()
    [message_id] = text.split()[-1:]
    view = StatusStore(redis_client, ttl=60).view(message_id)
    assert view is not None
    assert sorted(r["address"] for r in view["recipients"]) == [
        "a@implicit.test",
        "b@implicit.test",
    ]


def test_oversize_is_552_5_3_4_at_mail_and_at_data(
    tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = submission_settings(tmp_path, tls, redis_server.url, max_message_bytes=4096)
    big = message(body="x" * 70 + ("\r\n" + "x" * 70) * 70)
    with running_listener(settings):
        client = login(settings, tls)
        assert client.esmtp_features["size"] == "4096"
        # smtplib announces SIZE=… itself: refused at MAIL FROM.
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(SENDER, ["zoe@implicit.test"], big)
        assert (refused.value.smtp_code, refused.value.smtp_error.split()[0]) == (552, b"5.3.4")
        # Without SIZE, the data itself is counted.
        client.rset()
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("zoe@implicit.test")[0] == 250
        code, text = reply_text(client.data(big))
        assert (code, text.split()[0]) == (552, "5.3.4")
        client.quit()
    assert redis_client.keys("mailroom:content:*") == []


def test_250_comes_once_content_status_and_task_are_in_redis(
    listener: Settings, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    client = login(listener, tls)
    assert client.sock is not None
    address = client.sock.getsockname()[0]
    data = message(extra="Bcc: hidden@implicit.test,\r\n another@implicit.test\r\n")
    client.mail(SENDER)
    client.rcpt("zoe@implicit.test")
    client.rcpt("hidden@implicit.test")
    code, text = reply_text(client.data(data))
    client.quit()

    assert code == 250
    assert text.startswith("2.0.0 Ok: queued as ")
    message_id = text.split()[-1]
    stored = ContentStore(redis_client, ttl=60).get(message_id)
    assert stored is not None
    assert stored.sender == SENDER
    assert stored.data.startswith(f"Received: from app.example.test ([{address}])\r\n".encode())
    assert f"with ESMTPSA id {message_id};".encode() in stored.data
    assert f"Message-ID: <{message_id}@example.test>\r\n".encode() in stored.data
    assert b"Bcc" not in stored.data
    assert b"another@" not in stored.data
    head, _, body = stored.data.partition(b"\r\n\r\n")
    names = [line.split(b":")[0] for line in head.split(b"\r\n") if line[:1] not in b" \t"]
    assert names == [b"Received", b"From", b"To", b"Subject", b"Message-ID", b"Date"]
    assert body == b"Hello\r\n"
    assert StatusStore(redis_client, ttl=60).is_enqueued(message_id)
    queue = shard_queue(shard_of("implicit.test", 4))
    [task] = queued_task_bodies(redis_client, queue)
    assert task["decoded_body"][0][0] == [[message_id, "implicit.test", 1]]


def test_enqueue_failing_after_the_store_leaves_nothing_and_gets_451(
    settings: Settings, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    # The content and status reach the real Redis; the Celery publish goes to a dead port.
    dead_broker = settings.model_copy(update={"redis_url": f"redis://{HOST}:{free_port()}/0"})
    producer = Mailroom(settings, client=redis_client, app=make_celery(dead_broker))
    with running_listener(settings, producer=producer):
        client = login(settings, tls)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, ["zoe@implicit.test"], message())
        client.quit()
    assert (refused.value.smtp_code, refused.value.smtp_error.split()[0]) == (451, b"4.3.0")
    assert redis_client.keys("mailroom:*") == [EVENTS_KEY.encode()]
    # The event log says the message came and went, so no consumer waits for it.
    entries: list[tuple[bytes, dict[bytes, bytes]]] = redis_client.xrange(EVENTS_KEY)  # type: ignore[assignment]
    assert [fields[b"type"] for _, fields in entries] == [b"queued", b"deleted"]
    assert entries[1][1][b"text"] == WITHDRAWN.encode()


def test_redis_stopped_before_data_is_451_4_3_0_and_nothing_half_stored(
    tmp_path: Path, tls: TlsMaterial, make_redis_server: RedisServerFactory
) -> None:
    server = make_redis_server(appendonly=True)
    settings = submission_settings(tmp_path, tls, server.url)
    with running_listener(settings):
        client = login(settings, tls)
        accepted = client.sendmail(SENDER, ["zoe@implicit.test"], message("first"))
        assert accepted == {}
        with server.client() as probe:
            before = set(probe.keys("*"))
        [first_id] = {key.split(b":")[-1] for key in before if key.startswith(b"mailroom:content:")}

        client.mail(SENDER)
        client.rcpt("zoe@implicit.test")
        server.stop()
        code, text = reply_text(client.data(message("second")))
        client.quit()
        server.start()

    assert (code, text.split()[0]) == (451, "4.3.0")
    with server.client() as probe:
        after = set(probe.keys("*"))
        assert after == before  # the first message survived the restart, nothing else is there
        first = first_id.decode()
        assert {f"mailroom:msg:{first}", f"mailroom:content:{first}"} <= {
            key.decode() for key in after
        }
        [queue] = [key for key in after if key.startswith(b"mailroom.shard.")]
        assert probe.llen(queue) == 1


def test_implicit_tls_listener_takes_auth_from_the_first_command(
    tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = submission_settings(tmp_path, tls, redis_server.url, submission_tls="tls")
    listen = settings.submission_listen
    with running_listener(settings):
        client = smtplib.SMTP_SSL(
            listen.host, listen.port, context=tls.client_context(), timeout=10
        )
        client.ehlo("app.example.test")
        assert not client.has_extn("starttls")
        assert set(client.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
        client.login(USER, PASSWORD)
        assert client.sendmail(SENDER, ["zoe@implicit.test"], message()) == {}
        client.quit()
    [key] = redis_client.keys("mailroom:content:*")
    assert redis_client.hget(key, "sender") == SENDER.encode()


def test_stopping_tells_connected_clients_421_and_closes(
    settings: Settings, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    server = build_server(settings)
    server.start()
    try:
        client = login(settings, tls)
        assert client.mail(SENDER)[0] == 250
    finally:
        server.stop(grace=5)
    code, text = reply_text(client.getreply())  # said unasked, before the close (RFC 5321 §3.8)
    assert (code, text.split()[0]) == (421, "4.3.2")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    assert redis_client.keys("mailroom:content:*") == []


def test_withdraw_leaves_nothing_of_a_submit_that_failed_part_way(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # What a failed submit leaves must all go, should the stores ever write another key.
    mailroom = Mailroom(settings, client=redis_client)
    sent = outbound("m1", SENDER, message(), smtputf8=False)
    mailroom.submit(sent, ["zoe@implicit.test", "max@mx.test"])
    assert redis_client.keys("*m1*")
    assert mailroom.withdraw("m1") is False  # marked enqueued: its tasks are out, it stays
    assert redis_client.keys("*m1*")

    redis_client.hdel("mailroom:msg:m1", "enqueued")  # as if the publish had failed
    assert mailroom.withdraw("m1") is True
    assert redis_client.keys("*m1*") == []
