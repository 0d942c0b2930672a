"""Step 1 of a session: open it (TCP connect, greeting, EHLO with HELO fallback, STARTTLS, EHLO
again, AUTH), ready for its first transaction.

A failure while opening hits every recipient. The TCP connection is dialled here, not by
aiosmtplib, so TLS checks the host *name* although the address is what was dialled.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from ipaddress import ip_address

from aiosmtplib import SMTP

from workers.model import reply as replies
from workers.model.reply import Code, Reply, Step
from workers.smtp.channel import Channel
from workers.smtp.connection import Connection
from workers.smtp.connection_pool import ConnectionPool
from workers.smtp.peer import BearerCredentials, Login
from workers.smtp.slot import Slot
from workers.smtp.tls_policy import TlsMode, TlsPolicy


async def open_session(channel: Channel, pool: ConnectionPool | None, slot: Slot) -> bool:
    """Open a connection to `channel.peer`, under `slot`'s lease when there is a `pool`; False
    (every recipient given the reason) when it cannot be used for a transaction."""
    peer, ledger = channel.peer, channel.ledger
    tls = peer.tls
    implicit = tls is not None and tls.mode is TlsMode.IMPLICIT
    started = time.perf_counter()
    connected = await _connect(peer.address, peer.port, peer.timeouts.connect)
    if isinstance(connected, str):
        ledger.record("connect", replies.no_answer(peer.host, connected), started)
        ledger.abandon(ledger.steps[-1].reply)
        return False
    smtp = SMTP(
        hostname=peer.host,
        sock=connected,
        use_tls=implicit,
        start_tls=False,
        tls_context=tls.context if tls is not None else None,
        local_hostname=peer.helo,
        timeout=peer.timeouts.command,
    )
    opened = asyncio.get_running_loop().time()
    channel.connection = Connection(smtp, None, tls_active=False, opened=opened)
    if pool is not None:
        pool.attach(slot, channel.connection)
    greeting = await channel.call("connect", smtp.connect(), started, handshake=implicit)
    channel.keep_transport()
    if greeting.reply_class != 2:
        return channel.fail(greeting)
    channel.greeted = True
    channel.set_tls(implicit)
    if not await _hello(channel):
        return False
    if tls is not None and not implicit and not await _starttls(channel, tls):
        return False
    if tls is not None and tls.required and not channel.tls_active:
        return channel.fail(replies.tls_unavailable(peer.host, tls.required_by), "STARTTLS")
    if peer.credentials is not None and not await _authenticate(channel, peer.credentials):
        return False
    return channel.take_over()


async def _hello(channel: Channel) -> bool:
    smtp = channel.smtp
    assert smtp is not None
    ehlo = await channel.call("EHLO", smtp.ehlo())
    if ehlo.reply_class == 2:
        return True
    # RFC 5321 §3.2: a server that does not know EHLO answers 500/502 ("command not
    # recognized"); HELO still works there. Any other refusal is the server's answer.
    if not smtp.is_connected or ehlo.code not in (Code.SYNTAX_ERROR, Code.NOT_IMPLEMENTED):
        return channel.fail(ehlo)
    helo = await channel.call("HELO", smtp.helo())
    return helo.reply_class == 2 or channel.fail(helo)


async def _starttls(channel: Channel, tls: TlsPolicy) -> bool:
    smtp, host = channel.smtp, channel.peer.host
    assert smtp is not None
    if not smtp.supports_extension("starttls"):
        unavailable = replies.tls_unavailable(host, tls.required_by)
        return not tls.required or channel.fail(unavailable, "STARTTLS")
    started = time.perf_counter()
    upgraded = await channel.call(
        "STARTTLS",
        smtp.starttls(server_hostname=host, tls_context=tls.context),
        started,
        handshake=True,
    )
    if upgraded.reply_class != 2:
        channel.tls_failed = not tls.required
        if upgraded.enhanced != "4.7.5":
            refused = replies.tls_failed(host, f"STARTTLS refused: {upgraded}", tls.required_by)
            return channel.fail(refused, "STARTTLS")
        return channel.fail(upgraded)
    channel.keep_transport()
    channel.set_tls(True)
    # RFC 3207 §4.2: forget what the server said before TLS and ask again.
    return await _hello(channel)


async def _authenticate(channel: Channel, credentials: Login) -> bool:
    smtp, host = channel.smtp, channel.peer.host
    assert smtp is not None
    if not channel.tls_active:
        return channel.fail(replies.tls_unavailable(host), "AUTH")
    methods = smtp.server_auth_methods
    if isinstance(credentials, BearerCredentials):
        if "xoauth2" not in methods:
            return channel.fail(replies.auth_unavailable(host, "XOAUTH2"), "AUTH")
        # aiosmtplib's auth_xoauth2 answers a 334 (Google's base64 JSON error) with an empty
        # line and returns the final reply; the token never reaches a reply or an exception.
        command, call = "AUTH XOAUTH2", smtp.auth_xoauth2
        secret = credentials.token
    elif "plain" in methods:
        command, call = "AUTH PLAIN", smtp.auth_plain
    elif "login" in methods:
        command, call = "AUTH LOGIN", smtp.auth_login
    else:
        return channel.fail(replies.auth_unavailable(host, "PLAIN, LOGIN"), "AUTH")
    if not isinstance(credentials, BearerCredentials):
        secret = credentials.password
    answer = await channel.call(command, call(credentials.username, secret))
    if answer.reply_class == 2:
        return True
    # A refused login is the operator's to fix, never the recipient's fault: defer, as
    # Postfix's smtp_sasl_auth_soft_bounce does, and keep the server's words.
    refused = Reply(
        Code.LOCAL_ERROR,
        "4.7.0",
        f"authentication as {credentials.username} failed: {answer}",
        Step.OPEN_SESSION,
    )
    return channel.fail(refused, command)


async def _connect(address: str, port: int, timeout: float) -> socket.socket | str:
    """Open a TCP connection ourselves, so TLS can check the host *name* we dialled by address."""
    family = socket.AF_INET6 if ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    # Commands go out at once, not held for the server's delayed ACK (Nagle): asyncio only
    # sets this on sockets it creates itself.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (address, port)), timeout
        )
    except TimeoutError:
        sock.close()
        return f"connect to {address}:{port} timed out after {timeout:g} s"
    except OSError as exc:
        sock.close()
        # asyncio's message ("Connect call failed") hides the reason; errno has it.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return f"connect to {address}:{port} failed: {reason}"
    return sock
