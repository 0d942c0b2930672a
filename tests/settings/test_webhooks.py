"""MAILROOM_WEBHOOKS parsing: endpoints, their labels and groups, and one line per mistake that
never shows the secret."""

from __future__ import annotations

import pytest

from settings.webhooks import parse_webhooks


def test_endpoints_are_parsed_with_a_label_free_of_credentials() -> None:
    [hook] = parse_webhooks(
        '[{"url": "https://user:pw@hooks.example.com/m?token=abc", "secret": "s3cr3t",'
        ' "events": ["bounced", "delivered"]}]'
    )
    assert hook.label == "https://hooks.example.com/m"
    assert hook.group.startswith("webhook:")
    assert hook.wants("bounced")
    assert not hook.wants("queued")
    assert "s3cr3t" not in repr(hook)
    assert parse_webhooks("") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[", "must be a JSON list"),
        ('{"url": "x"}', "must be a JSON list of objects"),
        ('[{"url": "ftp://x.example/", "secret": "s3cr3t"}]', "http:// or https://"),
        ('[{"url": "https://x.example/", "secret": ""}]', "needs secret"),
        ('[{"url": "https://x.example/", "secret": "s3cr3t", "events": ["sent"]}]', "sent"),
        ('[{"url": "https://x.example/", "secret": "s3cr3t", "retries": 3}]', "unknown field"),
        (
            '[{"url": "https://x.example/", "secret": "s3cr3t"},'
            ' {"url": "https://x.example/", "secret": "other"}]',
            "given twice",
        ),
    ],
)
def test_mistakes_are_one_line_without_the_secret(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_webhooks(text)
    assert "s3cr3t" not in str(caught.value)
    assert "\n" not in str(caught.value)
