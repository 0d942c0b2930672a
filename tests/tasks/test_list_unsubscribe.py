"""notify(list_unsubscribe=…, one_click=…): validation, the fields written (RFC 2369, RFC 8058),
their DKIM coverage checked by dkimpy through dnsmasq, and `mailroom send`'s flags against a real
Redis (what the stored message holds)."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks.dkim.signer import Signer
from tasks.message import build_message
from tasks.notification import InvalidNotification, Notification
from tests.support.dns_server import DnsServer
from tests.support.redis_server import RedisServer
from tests.tasks.dkim_support import DOMAIN, KeySet, dkim_dns, dkim_keys, verify
from tests.tasks.test_cli import assert_usage_error, run_mailroom
from workers.queue.content import ContentStore

__all__ = ["dkim_dns", "dkim_keys"]  # fixtures

HTTPS = "https://news.example.com/unsubscribe?u=8f2e&list=weekly"
MAILTO = "mailto:unsubscribe@example.com?subject=unsubscribe%20weekly"


def notification(**overrides: Any) -> Notification:
    fields: dict[str, Any] = {
        "sender": f"News <news@{DOMAIN}>",
        "to": ["a@example.org"],
        "subject": "This week",
        "text": "Hello",
    }
    fields.update(overrides)
    return Notification.validate_dict(fields)


def built(**overrides: Any) -> bytes:
    message = build_message(
        notification(**overrides), message_id="m1", helo_domain=DOMAIN, max_bytes=1_000_000
    )
    return message.data


def headers(data: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def test_one_click_with_both_uris_writes_both_fields() -> None:
    data = built(list_unsubscribe=[HTTPS, MAILTO], one_click=True)
    parsed = headers(data)
    assert parsed["List-Unsubscribe"] == f"<{HTTPS}>, <{MAILTO}>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert all(len(line) <= 78 for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"))


def test_a_single_uri_without_one_click_writes_no_post_field() -> None:
    parsed = headers(built(list_unsubscribe=MAILTO))
    assert parsed["List-Unsubscribe"] == f"<{MAILTO}>"
    assert "List-Unsubscribe-Post" not in parsed
    assert "List-Unsubscribe" not in headers(built())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"list_unsubscribe": "http://example.com/u"}, "list_unsubscribe: must be an https: or"),
        ({"list_unsubscribe": "javascript:alert(1)"}, "must be an https: or mailto: URI"),
        ({"list_unsubscribe": "https:///path"}, "an https URI needs a host"),
        ({"list_unsubscribe": "mailto:?subject=x"}, "a mailto URI needs an address"),
        ({"list_unsubscribe": HTTPS + "\r\nBcc: x@y.z"}, "contains '\\r'"),
        ({"list_unsubscribe": HTTPS + ">, <https://evil.test/"}, "contains '>'"),
        ({"list_unsubscribe": "https://ex.com/" + "a" * 900}, "longer than 900 characters"),
        ({"list_unsubscribe": "https://bücher.example/u"}, "must be ASCII"),
        ({"list_unsubscribe": []}, "list_unsubscribe: is an empty list"),
        ({"list_unsubscribe": [HTTPS, HTTPS]}, "list_unsubscribe[1]: a second https URI"),
        ({"list_unsubscribe": [MAILTO, "ftp://x"]}, "list_unsubscribe[1]: must be an https"),
        ({"one_click": True}, "one_click: needs list_unsubscribe with an https URI"),
        ({"list_unsubscribe": MAILTO, "one_click": True}, "one_click: needs an https URI"),
        ({"list_unsubscribe": HTTPS, "one_click": "yes"}, "one_click: "),
        (
            {"list_unsubscribe": HTTPS, "headers": {"list-unsubscribe": "<mailto:a@b.c>"}},
            "headers['list-unsubscribe']: list_unsubscribe writes this header",
        ),
    ],
)
def test_bad_values_are_one_line_naming_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidNotification) as caught:
        notification(**overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_both_fields_are_covered_by_the_dkim_signature(
    dkim_keys: KeySet, dkim_dns: DnsServer
) -> None:
    signed = Signer(dkim_keys.only("rsa", "ed")).sign(
        built(list_unsubscribe=[HTTPS, MAILTO], one_click=True)
    )
    signature = headers(signed)["DKIM-Signature"]
    names = "".join(str(signature).split()).partition("h=")[2].partition(";")[0].split(":")
    assert names[-2:] == ["list-unsubscribe", "list-unsubscribe-post"]
    assert verify(signed, dkim_dns, 0)
    assert verify(signed, dkim_dns, 1)
    for tampered in (
        signed.replace(b"u=8f2e", b"u=0000"),
        signed.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b""),
    ):
        assert tampered != signed
        assert not verify(tampered, dkim_dns, 0)
        assert not verify(tampered, dkim_dns, 1)


def test_mailroom_send_flags_write_the_fields(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {"MAILROOM_REDIS_URL": redis_server.url, "MAILROOM_SHARDS": "4"}
    good = ["send", "--from", "app@example.test", "--to", "a@one.test", "--subject", "Hi"]
    good += ["--text", "body", "--list-unsubscribe", HTTPS, "--list-unsubscribe", MAILTO]
    sent = run_mailroom(*good, "--one-click", "--json", env=env, cwd=tmp_path)
    assert sent.status == 0, sent.stderr
    stored = ContentStore(redis_client, 60).get(json.loads(sent.stdout)["id"])
    assert stored is not None
    parsed = headers(stored.data)
    assert parsed["List-Unsubscribe"] == f"<{HTTPS}>, <{MAILTO}>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    keys_before = sorted(redis_client.keys("*"))
    bad = run_mailroom(
        *good[:-4], "--list-unsubscribe", MAILTO, "--one-click", env=env, cwd=tmp_path
    )
    assert_usage_error(bad, "send: --one-click: needs an https URI")
    scheme = run_mailroom(*good[:-4], "--list-unsubscribe", "http://x.test/", env=env, cwd=tmp_path)
    assert_usage_error(scheme, "send: --list-unsubscribe: must be an https: or mailto: URI")
    assert sorted(redis_client.keys("*")) == keys_before  # nothing enqueued
