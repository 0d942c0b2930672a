"""Submission accounts: scrypt hashes, account lines, sender policies and the account file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tasks.submission.accounts import (
    SCRYPT_N,
    Account,
    AccountError,
    Accounts,
    PasswordHash,
    SenderPolicy,
    new_account,
    parse_line,
)

PASSWORD = "s3cret pässword"


@pytest.fixture(scope="module")
def account() -> Account:
    return new_account("app", PASSWORD, ["billing@example.com", "@Example.ORG"])


def test_hash_is_salted_scrypt_and_verifies_only_its_password() -> None:
    first, second = PasswordHash.new(PASSWORD), PasswordHash.new(PASSWORD)
    assert first.salt != second.salt
    assert first.key != second.key
    assert str(first).startswith(f"scrypt${SCRYPT_N}$8$1$")
    assert first.verify(PASSWORD.encode())
    assert not first.verify(b"s3cret passwort")
    assert not first.verify(b"")
    # It is the standard scrypt (RFC 7914), so other tools can check a line too.
    expected = hashlib.scrypt(
        PASSWORD.encode(), salt=first.salt, n=SCRYPT_N, r=8, p=1, dklen=32, maxmem=64 * 2**20
    )
    assert first.key == expected


def test_account_line_round_trips_and_never_holds_the_password(account: Account) -> None:
    line = account.line()
    assert line.startswith("app:scrypt$")
    assert line.endswith(":billing@example.com,@example.org")
    assert PASSWORD not in line
    assert parse_line(line) == account
    assert parse_line(line).password.verify(PASSWORD.encode())


def test_a_line_without_senders_allows_any_sender() -> None:
    account = parse_line(new_account("open", "pw").line())
    assert account.line().count(":") == 1
    assert account.senders.allows("anyone@anywhere.example")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("billing@example.com", True),
        ("Billing@EXAMPLE.com", True),  # the same mailbox, spelled differently
        ("sales@example.com", False),
        ("anyone@example.org", True),
        ("anyone@sub.example.org", False),  # a domain entry does not cover subdomains
        ("billing@example.com.evil.test", False),
    ],
)
def test_sender_policy(account: Account, address: str, allowed: bool) -> None:
    assert account.senders.allows(address) is allowed


def test_sender_policy_takes_idna_and_the_wildcard() -> None:
    policy = SenderPolicy.parse(["@bücher.example"])
    assert policy.domains == frozenset({"xn--bcher-kva.example"})
    assert policy.allows("info@xn--bcher-kva.example")
    assert policy.allows("info@BÜCHER.example")
    assert SenderPolicy.parse(["*"]).allows("x@y.example")
    assert SenderPolicy.parse(["*"]).entries() == ["*"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("app", "USERNAME:HASH"),
        ("a b:scrypt$16384$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "username"),
        ("app:bcrypt$2b$12$abc", "scrypt$N$r$p$SALT$KEY"),
        ("app:scrypt$1000$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "power of 2"),
        ("app:scrypt$16384$99$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "r must be"),
        ("app:scrypt$16384$8$1$!!!$AAAAAAAAAAAAAAAAAAAAAA", "base64"),
        ("app:scrypt$16384$8$1$AAAA$AAAA", "too short"),
    ],
)
def test_bad_lines_are_refused_with_a_reason(line: str, problem: str) -> None:
    with pytest.raises(AccountError, match=problem.replace("$", r"\$")):
        parse_line(line)


def test_bad_sender_entry_is_refused() -> None:
    with pytest.raises(AccountError, match="sender"):
        new_account("app", "pw", ["not an address@"])
    with pytest.raises(AccountError, match="sender domain"):
        SenderPolicy.parse(["@-bad-.example"])


def test_account_file_skips_comments_and_verifies(tmp_path: Path, account: Account) -> None:
    path = tmp_path / "accounts"
    path.write_text(f"# Mailroom accounts\n\n{account.line()}\n   \n")
    accounts = Accounts.load(path)
    assert len(accounts) == 1
    assert "app" in accounts
    assert accounts.verify(b"app", PASSWORD.encode()) == account
    assert accounts.verify("app", b"wrong") is None
    assert accounts.verify(b"nobody", PASSWORD.encode()) is None
    assert accounts.verify(b"\xff", b"x") is None  # not UTF-8: simply unknown


def test_account_file_errors_name_the_line_but_not_its_content(
    tmp_path: Path, account: Account
) -> None:
    path = tmp_path / "accounts"
    broken = account.line().replace("scrypt$", "scrypt$x")
    path.write_text(f"# header\n{account.line()}\n{broken}\n")
    with pytest.raises(AccountError) as excinfo:
        Accounts.load(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}:3: ")
    assert account.line().split(":")[1] not in message  # the hash is not echoed

    path.write_text(f"{account.line()}\n{account.line()}\n")
    with pytest.raises(AccountError, match=r":2: 'app' appears twice"):
        Accounts.load(path)
    with pytest.raises(AccountError, match="cannot read"):
        Accounts.load(tmp_path / "missing")


def test_new_account_refuses_an_empty_password_and_bad_usernames() -> None:
    with pytest.raises(AccountError, match="empty"):
        new_account("app", "")
    for username in ("", "with:colon", "with space", "x" * 129, "zoë"):
        with pytest.raises(AccountError, match="username"):
            new_account(username, "pw")
