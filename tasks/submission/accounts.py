"""Submission accounts: the account file, salted scrypt password hashes, and allowed senders.

The file named by MAILROOM_SUBMISSION_ACCOUNTS holds one account per line, as `mailroom passwd`
prints it:

    USERNAME:scrypt$N$r$p$SALT$KEY[:SENDERS]

- USERNAME: printable ASCII, no spaces or colons; compared exactly (case-sensitive).
- the hash: hashlib.scrypt (RFC 7914) with cost N, block size r and parallelism p, a random
  16-byte salt and a 32-byte key, both base64 without padding. Never the password itself.
- SENDERS (optional): comma-separated envelope senders the account may use in MAIL FROM:
  `billing@example.com` (that address), `@example.com` (any address at that domain, not its
  subdomains) or `*` (any). With no SENDERS field the account may use any sender.
Blank lines and lines starting with `#` are ignored. A malformed line is an error naming its line
number, never its content (the hash stays out of logs). Verification always runs one scrypt, even
for an unknown user, so timing does not tell which usernames exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tasks.notification import InvalidNotification, a_label_domain, parse_mailbox

SCHEME = "scrypt"
SCRYPT_N = 2**14  # 16 MiB of memory per hash with r=8: OWASP's minimum for scrypt
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
ANY_SENDER = "*"

_MAX_N = 2**20  # an account line cannot make a login cost more than about a gigabyte
_MAX_R = 32
_MAX_P = 16
_USERNAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,128}")  # printable ASCII without ":" or space


class AccountError(ValueError):
    """A bad account file, account line, username or sender; str() is one line."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A salted scrypt hash of one password, with the parameters that made it."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def new(cls, password: str | bytes, salt: bytes | None = None) -> PasswordHash:
        """Hash `password` (UTF-8 when text) with a fresh random salt and today's parameters."""
        salt = os.urandom(SALT_BYTES) if salt is None else salt
        secret = password.encode() if isinstance(password, str) else password
        key = _scrypt(secret, salt, _Cost(SCRYPT_N, SCRYPT_R, SCRYPT_P), KEY_BYTES)
        return cls(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, key)

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Read `scrypt$N$r$p$SALT$KEY`.

        :raises AccountError: another scheme, parameters out of range, or bad base64.
        """
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != SCHEME:
            raise AccountError("the hash is not scrypt$N$r$p$SALT$KEY")
        if not all(part.isascii() and part.isdigit() for part in parts[1:4]):
            raise AccountError("scrypt parameters must be whole numbers")
        n, r, p = (int(part) for part in parts[1:4])
        if not (1 < n <= _MAX_N and n & (n - 1) == 0):
            raise AccountError(f"scrypt N must be a power of 2 up to {_MAX_N}")
        if not (1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
            raise AccountError(f"scrypt r must be 1..{_MAX_R} and p 1..{_MAX_P}")
        try:
            salt, key = _unb64(parts[4]), _unb64(parts[5])
        except (binascii.Error, ValueError):
            raise AccountError("salt and key must be base64") from None
        if len(salt) < 8 or len(key) < 16:
            raise AccountError("salt or key too short")
        return cls(n, r, p, salt, key)

    def verify(self, password: bytes) -> bool:
        """Whether `password` is the one hashed here (constant-time comparison)."""
        candidate = _scrypt(password, self.salt, _Cost(self.n, self.r, self.p), len(self.key))
        return hmac.compare_digest(candidate, self.key)

    def __str__(self) -> str:
        return f"{SCHEME}${self.n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.key)}"


class _Cost(NamedTuple):
    """scrypt's work factors: CPU and memory (N), block size (r), parallelism (p)."""

    n: int
    r: int
    p: int


def _scrypt(password: bytes, salt: bytes, cost: _Cost, size: int) -> bytes:
    n, r, p = cost
    # hashlib refuses above maxmem (32 MiB by default); scrypt needs about 128·r·N bytes.
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=size)


# Verifying against this for unknown users costs what a real check costs.
_DUMMY = PasswordHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\0" * SALT_BYTES, b"\0" * KEY_BYTES)


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    """The envelope senders one account may use: addresses, whole domains, or anyone."""

    addresses: frozenset[str] = frozenset()  # compared case-insensitively, domain as A-label
    domains: frozenset[str] = frozenset()  # A-labels
    anyone: bool = True  # no SENDERS field, or `*` among them
    listed: bool = False  # the line had a SENDERS field (so `*` is written back)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> SenderPolicy:
        """Read `addr@domain`, `@domain` and `*` entries; none at all means anyone.

        :raises AccountError: an entry that is no valid address or domain.
        """
        addresses: set[str] = set()
        domains: set[str] = set()
        anyone = False
        items = [entry.strip() for entry in entries]
        if not items:
            return cls()
        for entry in items:
            if entry == ANY_SENDER:
                anyone = True
            elif entry.startswith("@") or "@" not in entry:
                try:
                    domains.add(a_label_domain(entry.removeprefix("@")))
                except ValueError as exc:
                    raise AccountError(f"sender domain {entry!r}: {exc}") from None
            else:
                try:
                    addresses.add(_comparable(parse_mailbox("sender", entry).address))
                except InvalidNotification:
                    raise AccountError(f"sender {entry!r} is not a valid address") from None
        return cls(frozenset(addresses), frozenset(domains), anyone, listed=True)

    def allows(self, address: str) -> bool:
        """Whether MAIL FROM `address` (already validated) is one this account may use."""
        if self.anyone:
            return True
        local, _, domain = address.rpartition("@")
        try:
            ascii_domain = a_label_domain(domain)
        except ValueError:
            return False
        return (
            _comparable(f"{local}@{ascii_domain}") in self.addresses or ascii_domain in self.domains
        )

    def entries(self) -> list[str]:
        """The policy as account-file entries (none for a line that had no SENDERS field)."""
        if self.anyone:
            return [ANY_SENDER] if self.listed else []
        return sorted(self.addresses) + [f"@{domain}" for domain in sorted(self.domains)]


def _comparable(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local.casefold()}@{a_label_domain(domain)}"


@dataclass(frozen=True, slots=True)
class Account:
    """One submission account."""

    username: str
    password: PasswordHash
    senders: SenderPolicy

    def line(self) -> str:
        """The account-file line for this account."""
        entries = self.senders.entries()
        tail = f":{','.join(entries)}" if entries else ""
        return f"{self.username}:{self.password}{tail}"


def check_username(username: str) -> str:
    """Return `username` if it can stand in an account line; raise AccountError otherwise."""
    if not _USERNAME.fullmatch(username):
        raise AccountError(
            "a username is 1 to 128 printable ASCII characters without spaces or ':'"
        )
    return username


def new_account(username: str, password: str, senders: Iterable[str] = ()) -> Account:
    """An account with a freshly salted hash of `password`.

    :raises AccountError: a bad username, an empty password or a bad sender entry.
    """
    check_username(username)
    if not password:
        raise AccountError("the password is empty")
    policy = SenderPolicy.parse(senders)
    return Account(username, PasswordHash.new(password), policy)


def parse_line(line: str) -> Account:
    """Read one account line (see the module docstring).

    :raises AccountError: what is wrong, without echoing the line.
    """
    username, sep, rest = line.strip().partition(":")
    if not sep:
        raise AccountError("expected USERNAME:HASH[:SENDERS]")
    check_username(username)
    hashed, _, senders = rest.partition(":")
    entries = [entry for entry in senders.split(",") if entry.strip()] if senders else []
    return Account(username, PasswordHash.parse(hashed), SenderPolicy.parse(entries))


class Accounts:
    """Every account of one account file, by username."""

    def __init__(self, accounts: Mapping[str, Account]) -> None:
        self._accounts = dict(accounts)

    @classmethod
    def parse(cls, text: str, source: str = "accounts") -> Accounts:
        """Read an account file's text; `source` names it in errors.

        :raises AccountError: `source:LINE: problem` for the first bad or duplicate line.
        """
        accounts: dict[str, Account] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                account = parse_line(line)
            except AccountError as exc:
                raise AccountError(f"{source}:{number}: {exc}") from None
            if account.username in accounts:
                raise AccountError(f"{source}:{number}: {account.username!r} appears twice")
            accounts[account.username] = account
        return cls(accounts)

    @classmethod
    def load(cls, path: Path) -> Accounts:
        """Read the account file at `path`.

        :raises AccountError: the file cannot be read, or a line is bad.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise AccountError(f"cannot read '{path}': {reason}") from None
        return cls.parse(text, str(path))

    def __len__(self) -> int:
        return len(self._accounts)

    def __contains__(self, username: object) -> bool:
        return username in self._accounts

    def verify(self, username: bytes | str, password: bytes) -> Account | None:
        """The account when `password` is its password, else None (one scrypt either way)."""
        if isinstance(username, bytes):
            try:
                username = username.decode("utf-8")
            except UnicodeDecodeError:
                username = ""
        account = self._accounts.get(username)
        hashed = account.password if account is not None else _DUMMY
        ok = hashed.verify(password)
        return account if ok and account is not None else None
