"""AUTH PLAIN and LOGIN for the listener: only over TLS, against the account file, with failed
logins counted per client address (a client over the limit is hung up on); blocking work
(scrypt, Redis) runs in threads."""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

import redis
from aiosmtpd.smtp import SMTP, AuthResult

from tasks.submission import replies
from tasks.submission.accounts import Account, Accounts
from tasks.submission.auth_limits import AuthFailureLimiter
from tasks.submission.events import event, log, peer_ip


@dataclass(frozen=True, slots=True)
class _Blocked:
    """The client's address is over its failed-login limit."""


@dataclass(frozen=True, slots=True)
class _Failed:
    """Wrong username or password; `failures` in the current window so far."""

    failures: int


_Verdict = Account | _Blocked | _Failed


class Authenticator:
    """Checks credentials for the handler's `auth_*` mechanisms."""

    def __init__(self, accounts: Accounts, limiter: AuthFailureLimiter) -> None:
        self._accounts = accounts
        self._limiter = limiter

    async def plain(self, server: SMTP, args: list[str]) -> AuthResult:
        if refusal := await self._refuse_auth(server):
            return refusal
        if len(args) == 1:
            response = await server.challenge_auth("")
            if not isinstance(response, bytes):
                return AuthResult(success=False, handled=True)  # aborted; aiosmtpd replied
        else:
            try:
                response = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                return _refused("501 5.5.2 Cannot decode base64")
        parts = response.split(b"\0")
        if len(parts) != 3:
            return _refused("501 5.5.2 Cannot split PLAIN credentials")
        authzid, username, password = parts
        if authzid and authzid != username:
            # RFC 4616 §2: acting as another user is not something any account may do here.
            return _refused(replies.AUTH_INVALID)
        return await self._login(server, "PLAIN", username, password)

    async def login(self, server: SMTP, args: list[str]) -> AuthResult:
        if refusal := await self._refuse_auth(server):
            return refusal
        if len(args) == 1:
            username = await server.challenge_auth(SMTP.AuthLoginUsernameChallenge)
            if not isinstance(username, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                username = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                return _refused("501 5.5.2 Cannot decode base64")
        password = await server.challenge_auth(SMTP.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._login(server, "LOGIN", username, password)

    async def _refuse_auth(self, server: SMTP) -> AuthResult | None:
        """A refusal before any credentials are read: no TLS, or an address cut off."""
        if not _tls_active(server):
            # aiosmtpd refuses this already in STARTTLS mode; kept so that no configuration
            # can ever take a password in clear text.
            return _refused(replies.ENCRYPTION_REQUIRED)
        try:
            blocked = await asyncio.to_thread(self._limiter.blocked, peer_ip(server))
        except redis.RedisError as exc:
            log.warning("AUTH refused, Redis unavailable: %s", exc)
            return _refused(replies.AUTH_UNAVAILABLE)
        if blocked:
            await _hang_up(server, replies.TOO_MANY_FAILURES)
            return AuthResult(success=False, handled=True)
        return None

    async def _login(
        self, server: SMTP, mechanism: str, username: bytes, password: bytes
    ) -> AuthResult:
        peer = peer_ip(server)
        try:
            verdict = await asyncio.to_thread(self._verify, peer, username, password)
        except redis.RedisError as exc:
            log.warning("AUTH refused, Redis unavailable: %s", exc)
            return _refused(replies.AUTH_UNAVAILABLE)
        match verdict:
            case Account():
                event("login", peer=peer, account=verdict.username, mechanism=mechanism)
                return AuthResult(success=True, auth_data=verdict)
            case _Blocked():
                await _hang_up(server, replies.TOO_MANY_FAILURES)
                return AuthResult(success=False, handled=True)
            case _Failed(failures=failures):
                # No username: a password typed into the username field would land in the log.
                event("login_failed", peer=peer, mechanism=mechanism, failures=failures)
                return _refused(replies.AUTH_INVALID)

    def _verify(self, peer: str, username: bytes, password: bytes) -> _Verdict:
        # Counted as a failure before the check: parallel connections from one address would
        # otherwise all pass a "blocked?" test while their passwords are being hashed.
        failures = self._limiter.reserve(peer)
        if failures is None:
            return _Blocked()
        account = self._accounts.verify(username, password)
        if account is None:
            return _Failed(failures)
        self._limiter.release(peer)
        return account


def _refused(reply: str) -> AuthResult:
    # handled=False with a message: aiosmtpd sends the message as the AUTH reply.
    return AuthResult(success=False, handled=False, message=reply)


async def _hang_up(server: SMTP, reply: str) -> None:
    """Send a 421 and close the connection (RFC 5321 §3.8)."""
    await server.push(reply)
    if server.transport is not None:
        server.transport.close()


def _tls_active(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None
