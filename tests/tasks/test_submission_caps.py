"""Abuse bounds of the submission listener under parallel clients: failed logins are counted
before the password is checked, and connections are capped per listener and per client address.

A real listener on 127.0.0.20, the session's real Redis, smtplib clients in threads.
"""

from __future__ import annotations

import smtplib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from tasks.submission.auth_limits import AuthFailureLimiter, client_key
from tests.support.redis_server import RedisServer
from tests.support.tls_material import TlsMaterial
from tests.tasks.submission_support import (
    OTHER_CLIENT,
    PASSWORD,
    USER,
    auth_plain,
    connect,
    running_listener,
    submission_settings,
)

CLIENTS = 8


def _text(error: bytes | str) -> str:
    return error.decode() if isinstance(error, bytes) else error


def test_parallel_bad_logins_never_check_more_passwords_than_the_limit(
    tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = submission_settings(tmp_path, tls, redis_server.url)
    limiter = AuthFailureLimiter(redis_client, max_failures=3, window=600)
    with running_listener(settings, limiter=limiter):
        clients = [connect(settings, tls) for _ in range(CLIENTS)]
        ready = threading.Barrier(CLIENTS)

        def guess(client: smtplib.SMTP) -> int:
            ready.wait(timeout=10)
            return auth_plain(client, USER, "guess")[0]

        with ThreadPoolExecutor(CLIENTS) as pool:
            codes = sorted(pool.map(guess, clients))
        assert clients[0].sock is not None
        address = clients[0].sock.getsockname()[0]
        for client in clients:
            client.close()

    assert codes == [421] * (CLIENTS - 3) + [535] * 3
    assert int(redis_client.get(client_key(address)) or 0) == 3


def test_a_good_login_does_not_use_up_a_failure(
    tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = submission_settings(tmp_path, tls, redis_server.url)
    limiter = AuthFailureLimiter(redis_client, max_failures=1, window=600)
    with running_listener(settings, limiter=limiter):
        for _ in range(3):
            client = connect(settings, tls)
            assert auth_plain(client, USER, PASSWORD)[0] == 235
            client.quit()
        client = connect(settings, tls)
        assert client.sock is not None
        address = client.sock.getsockname()[0]
        assert auth_plain(client, USER, "guess")[0] == 535
        client.close()

    assert int(redis_client.get(client_key(address)) or 0) == 1


def test_connections_beyond_the_per_client_cap_get_421_4_7_0(
    tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = submission_settings(
        tmp_path, tls, redis_server.url, submission_max_connections_per_client=2
    )
    with running_listener(settings):
        held = [connect(settings, tls) for _ in range(2)]
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            connect(settings, tls)
        assert (refused.value.smtp_code, _text(refused.value.smtp_error)[:6]) == (421, "4.7.0 ")
        other = connect(settings, tls, source=OTHER_CLIENT)  # another address is not affected
        assert auth_plain(other, USER, PASSWORD)[0] == 235
        other.quit()
        held.pop().quit()
        again = connect(settings, tls)  # a freed place is taken again
        assert auth_plain(again, USER, PASSWORD)[0] == 235
        again.quit()
        for client in held:
            client.quit()


def test_connections_beyond_the_listener_cap_get_421_4_7_0(
    tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = submission_settings(tmp_path, tls, redis_server.url, submission_max_connections=2)
    with running_listener(settings):
        held = [connect(settings, tls), connect(settings, tls, source=OTHER_CLIENT)]
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            connect(settings, tls, source="127.0.0.22")
        assert (refused.value.smtp_code, _text(refused.value.smtp_error)[:6]) == (421, "4.7.0 ")
        for client in held:
            client.quit()
