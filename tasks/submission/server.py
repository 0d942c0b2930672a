"""The submission listener: aiosmtpd on its own event-loop thread, bound to SUBMISSION_LISTEN.

`build_server(settings)` checks what the listener needs (certificate, key, account file) and
raises `SettingsError` (one line naming the variable) when something is missing or unusable.
TLS is required for everything that matters: with SUBMISSION_TLS=starttls the client must
STARTTLS before any other command but EHLO, NOOP and QUIT (RFC 3207 §4, 530 5.7.0), and AUTH is
announced only after it; with `tls` the whole connection is TLS from the first byte (RFC 8314).
TLS 1.2 is the minimum. Connections beyond SUBMISSION_MAX_CONNECTIONS, or beyond
SUBMISSION_MAX_CONNECTIONS_PER_CLIENT from one client address (IPv6: its /64, as the failed-login
count), get `421 4.7.0` instead of the greeting and are closed. `stop()` stops accepting, lets
every message being queued finish (so no client loses a 250 it was owed), then drops the
remaining connections; their clients retry.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from settings import Listen, Settings, SettingsError, SubmissionTls, env_name
from tasks.api import Mailroom
from tasks.submission import replies
from tasks.submission.accounts import AccountError, Accounts
from tasks.submission.auth_limits import AuthFailureLimiter
from tasks.submission.connections import Caps, ListenerController, bind
from tasks.submission.handler import Producer, SubmissionHandler
from workers.queue.redis_client import redis_client

log = logging.getLogger("mailroom.submission")

IDENT = "Mailroom ESMTP submission"
IDLE_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command
STOP_GRACE = 30.0  # seconds a shutdown waits for messages being queued


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """What one listener serves: where, with which TLS, under which name and limits."""

    listen: Listen
    tls: SubmissionTls
    tls_context: ssl.SSLContext
    hostname: str
    max_message_bytes: int
    max_connections: int = 100
    max_connections_per_client: int = 20


class SubmissionServer:
    """One listener; `start()` returns once it accepts connections, `stop()` ends it."""

    def __init__(self, handler: SubmissionHandler, config: ListenerConfig) -> None:
        self.handler = handler
        self._caps = Caps(config.max_connections, config.max_connections_per_client)
        self.listen = config.listen
        self.tls = config.tls
        starttls = config.tls is SubmissionTls.STARTTLS
        tls_context = config.tls_context
        self._implicit_context = None if starttls else tls_context
        self._smtp_options: dict[str, Any] = {
            "hostname": config.hostname,
            "ident": IDENT,
            "data_size_limit": config.max_message_bytes,  # announced as SIZE, enforced in DATA
            "enable_SMTPUTF8": True,
            "tls_context": tls_context if starttls else None,
            "require_starttls": starttls,
            # aiosmtpd only knows STARTTLS as TLS; with implicit TLS every byte is encrypted
            # already, and the handler checks the transport itself before reading credentials.
            "auth_require_tls": starttls,
            "timeout": IDLE_TIMEOUT,
        }
        self._controller: ListenerController | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self.listen.port

    def start(self) -> None:
        """Bind and serve in a background thread.

        :raises OSError: the address cannot be bound (taken, or not this machine's).
        """
        if self._controller is not None:
            raise RuntimeError("the submission listener is already running")
        listener = bind(self.listen)
        controller = ListenerController(
            self.handler,
            listener,
            ssl_context=self._implicit_context,
            caps=self._caps,
            **self._smtp_options,
        )
        try:
            controller.start()
        except BaseException:
            listener.close()
            raise
        self._controller = controller

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop accepting, let messages being queued finish (up to `grace` s), close. Idempotent."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        draining = asyncio.run_coroutine_threadsafe(self._drain(controller, grace), controller.loop)
        draining.result(grace + 5)
        controller.stop()

    async def _drain(self, controller: ListenerController, grace: float) -> None:
        if controller.server is not None:
            controller.server.close()
        self.handler.close()
        try:
            await asyncio.wait_for(self.handler.wait_idle(), grace)
        except TimeoutError:
            log.warning("stopped with messages still being queued after %.0f s", grace)
        await controller.close_connections(replies.SHUTTING_DOWN)


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) presenting this certificate chain and key.

    :raises SettingsError: a file is missing or the pair cannot be loaded.
    """
    for field, path in (("submission_cert_file", cert_file), ("submission_key_file", key_file)):
        if not path.is_file():
            raise SettingsError(env_name(field), f"no such file (got '{path}')")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(
            env_name("submission_cert_file"),
            f"cannot load the certificate with MAILROOM_SUBMISSION_KEY_FILE: {exc}",
        ) from None
    return context


def load_accounts(path: Path) -> Accounts:
    """The account file, with at least one account.

    :raises SettingsError: it cannot be read, a line is bad, or it holds no account.
    """
    variable = env_name("submission_accounts")
    try:
        accounts = Accounts.load(path)
    except AccountError as exc:
        raise SettingsError(variable, str(exc)) from None
    if not accounts:
        raise SettingsError(variable, f"no accounts in '{path}' (add lines from mailroom passwd)")
    return accounts


def build_server(
    settings: Settings,
    *,
    producer: Producer | None = None,
    client: redis.Redis | None = None,
    limiter: AuthFailureLimiter | None = None,
) -> SubmissionServer:
    """The listener these settings describe; `producer` defaults to `Mailroom(settings)`.

    :raises SettingsError: the certificate, key or account file is missing or unusable.
    """
    required = {
        "submission_cert_file": settings.submission_cert_file,
        "submission_key_file": settings.submission_key_file,
        "submission_accounts": settings.submission_accounts,
    }
    for field, value in required.items():
        if value is None:
            raise SettingsError(env_name(field), "required by mailroom submission")
    assert settings.submission_cert_file is not None
    assert settings.submission_key_file is not None
    assert settings.submission_accounts is not None
    context = server_context(settings.submission_cert_file, settings.submission_key_file)
    accounts = load_accounts(settings.submission_accounts)
    if client is None:
        # Bounded, so a hung Redis turns into a 451 rather than a stuck client.
        client = redis_client(settings.redis_url, settings.redis_timeout)
    if producer is None:
        producer = Mailroom(settings, client=client)
    handler = SubmissionHandler(
        accounts=accounts,
        limiter=limiter or AuthFailureLimiter(client),
        producer=producer,
        hostname=settings.helo_name,
        max_recipients=settings.submission_max_recipients,
    )
    config = ListenerConfig(
        listen=settings.submission_listen,
        tls=settings.submission_tls,
        tls_context=context,
        hostname=settings.helo_name,
        max_message_bytes=settings.max_message_bytes,
        max_connections=settings.submission_max_connections,
        max_connections_per_client=settings.submission_max_connections_per_client,
    )
    return SubmissionServer(handler, config)
