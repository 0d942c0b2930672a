"""Tests for tasks/notification.py: validation of producer input and the envelope it yields."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.notification import InvalidNotification, Notification


def fields(**overrides: Any) -> dict[str, Any]:
    """A valid notification's fields, with `overrides` applied."""
    base: dict[str, Any] = {
        "sender": "App <app@example.com>",
        "to": ["alice@example.org"],
        "subject": "Hello",
        "text": "Hi Alice",
    }
    base.update(overrides)
    return base


def error_for(**overrides: Any) -> str:
    with pytest.raises(InvalidNotification) as caught:
        Notification.validate_dict(fields(**overrides))
    message = str(caught.value)
    assert message
    assert "\n" not in message
    assert "\r" not in message
    return message


# (overrides, the start of the error message: the field it names)
INVALID: list[tuple[dict[str, Any], str]] = [
    # addresses
    ({"to": ["alice@example.org", "bob@"]}, "to[1]: 'bob@' is not a valid e-mail address"),
    ({"to": ["bob.example.org"]}, "to[0]: 'bob.example.org' is not a valid e-mail address"),
    ({"to": ["@example.org"]}, "to[0]: '@example.org' is not a valid"),
    ({"to": [""]}, "to[0]: '' is not a valid"),
    ({"to": ["bob smith@example.org"]}, "to[0]: 'bob smith@example.org' is not a valid"),
    ({"to": [" bob@example.org"]}, "to[0]:"),
    ({"to": ["bob@example.org "]}, "to[0]:"),
    ({"to": ["bob..smith@example.org"]}, "to[0]:"),
    ({"to": [".bob@example.org"]}, "to[0]:"),
    ({"to": ["bob.@example.org"]}, "to[0]:"),
    ({"to": ['""@example.org']}, "to[0]:"),
    ({"to": ["bob@example..org"]}, "to[0]:"),
    ({"to": ["bob@example.org."]}, "to[0]:"),
    ({"to": ["bob@-example.org"]}, "to[0]:"),
    ({"to": ["bob@example-.org"]}, "to[0]:"),
    ({"to": ["bob@exa_mple.org"]}, "to[0]:"),
    ({"to": ["bob@[192.0.2.1]"]}, "to[0]: 'bob@[192.0.2.1]' is not a valid e-mail address (addr"),
    ({"to": ["bob@192.0.2.1"]}, "to[0]:"),
    ({"to": ["bob@xn--zz.example"]}, "to[0]:"),  # not valid punycode
    ({"to": ["bob@ab--cd.example"]}, "to[0]:"),  # RFC 5891 reserved R-LDH label
    ({"to": ["bob@exa mple.org"]}, "to[0]:"),
    ({"to": ["b\u00a0ob@example.org"]}, "to[0]:"),  # a no-break space is still a space
    ({"to": ["b\u200bob@example.org"]}, "to[0]:"),  # a format character
    ({"to": ["b\tob@example.org"]}, "to[0]:"),
    ({"to": ["x" * 65 + "@example.org"]}, "to[0]:"),
    ({"to": ["é" * 33 + "@example.org"]}, "to[0]:"),  # 66 octets in UTF-8
    ({"to": ["bob@" + "a" * 64 + ".org"]}, "to[0]:"),
    ({"to": ["bob@" + ".".join(["a" * 63] * 4) + ".org"]}, "to[0]:"),  # domain > 253
    ({"to": ["x" * 64 + "@" + ".".join(["a" * 60] * 3) + ".example"]}, "to[0]:"),  # > 254
    ({"to": ["Bob <bob@example.org"]}, "to[0]:"),
    ({"to": ["Bob bob@example.org>"]}, "to[0]:"),
    ({"to": ["Bob <bob@example.org> <eve@example.org>"]}, "to[0]:"),
    ({"to": ["Bob < bob@example.org>"]}, "to[0]:"),
    ({"cc": ["ok@example.org", "also ok@example.org"]}, "cc[1]:"),
    ({"bcc": ["a@example.org", "b@example.org", "c@"]}, "bcc[2]:"),
    ({"sender": "app"}, "sender: 'app' is not a valid e-mail address"),
    ({"sender": "App <app@example.com>\r\nBcc: eve@example.net"}, "sender: contains a line break"),
    # header injection through every header-bound value
    ({"subject": "Hi\r\nBcc: eve@example.net"}, "subject: contains a line break"),
    ({"subject": "Hi\nBcc: eve@example.net"}, "subject: contains a line break"),
    ({"subject": "Hi\rthere"}, "subject: contains a line break"),
    ({"subject": "Hi\u2028there"}, "subject: contains a line break"),
    ({"subject": "Hi\x85there"}, "subject: contains a line break"),
    ({"subject": "Hi\x00there"}, "subject: contains the control character U+0000"),
    ({"subject": "Hi\x1bthere"}, "subject: contains the control character U+001B"),
    ({"subject": "x" * 10_001}, "subject: longer than 10000 characters"),
    ({"to": ["Eve\r\nBcc: x@example.net <eve@example.org>"]}, "to[0]: contains a line break"),
    ({"to": ['"Eve\nBcc: x@example.net" <eve@example.org>']}, "to[0]: contains a line break"),
    ({"headers": {"X-Tag": "a\r\nBcc: eve@example.net"}}, "headers['X-Tag']: contains a line"),
    ({"headers": {"X-Tag": "a\nb"}}, "headers['X-Tag']: contains a line break"),
    ({"headers": {"X-Tag\r\nBcc": "eve@example.net"}}, "headers['X-Tag\\r\\nBcc']: the name"),
    ({"headers": {"X Tag": "v"}}, "headers['X Tag']: the name is not RFC 5322"),
    ({"headers": {"X-Tag:": "v"}}, "headers['X-Tag:']: the name"),
    ({"headers": {"": "v"}}, "headers['']: the name"),
    ({"headers": {"X-Tägg": "v"}}, "headers['X-Tägg']: the name"),
    ({"headers": {"From": "eve@example.net"}}, "headers['From']: Mailroom writes this"),
    ({"headers": {"bcc": "eve@example.net"}}, "headers['bcc']: Mailroom writes this"),
    ({"headers": {"To": "eve@example.net"}}, "headers['To']:"),
    ({"headers": {"CC": "eve@example.net"}}, "headers['CC']:"),
    ({"headers": {"Subject": "x"}}, "headers['Subject']:"),
    ({"headers": {"Date": "x"}}, "headers['Date']:"),
    ({"headers": {"Message-ID": "<x@y>"}}, "headers['Message-ID']:"),
    ({"headers": {"MIME-Version": "1.0"}}, "headers['MIME-Version']:"),
    ({"headers": {"Content-Type": "text/html"}}, "headers['Content-Type']:"),
    ({"headers": {"content-transfer-encoding": "8bit"}}, "headers['content-transfer-encoding']:"),
    ({"headers": {"X-Tag": "a", "x-tag": "b"}}, "headers['x-tag']: given twice"),
    ({"headers": {"Reply-To": "not an address"}}, "headers['Reply-To']:"),
    ({"headers": {"Reply-To": "用户@example.org"}}, "headers['Reply-To']:"),  # needs SMTPUTF8
    ({"headers": {"X-Long": "a" * 1000}}, "headers['X-Long']: a word too long to fold"),
    # bodies
    ({"text": "a\x00b"}, "text: contains U+0000"),
    ({"html": "é\ud800"}, "html: contains U+D800"),
    ({"text": ""}, "text: is empty or only whitespace"),
    ({"text": " \r\n\t"}, "text: is empty or only whitespace"),
    ({"html": ""}, "html: is empty or only whitespace"),
    ({"text": None, "html": "\n"}, "html: is empty or only whitespace"),
    # whole-notification rules and pydantic's own checks
    ({"to": [], "cc": [], "bcc": []}, "to: no recipient"),
    ({"text": None, "html": None}, "text: neither text nor html"),
    ({"to": "alice@example.org"}, "to: "),
    ({"to": [42]}, "to[0]: "),
    ({"subject": 42}, "subject: "),
    ({"headers": {"X-Tag": 1}}, "headers['X-Tag']: "),
    ({"priority": "high"}, "priority: is not a known field"),
    ({"idempotency_key": ""}, "idempotency_key: is empty"),
    ({"idempotency_key": "k" * 257}, "idempotency_key: longer than 256"),
    ({"idempotency_key": "k\r\n"}, "idempotency_key: contains a line break"),
    # reply_to
    ({"reply_to": "help@"}, "reply_to[0]: 'help@' is not a valid e-mail address"),
    ({"reply_to": ["a@example.org", "b"]}, "reply_to[1]: 'b' is not a valid e-mail address"),
    ({"reply_to": ["a@example.org\r\nBcc: x@example.org"]}, "reply_to[0]: contains a line"),
    ({"reply_to": [42]}, "reply_to[0]: "),
    (
        {"reply_to": "a@example.org", "headers": {"reply-to": "b@example.org"}},
        "reply_to: Reply-To is also given in headers",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), INVALID)
def test_invalid_input_names_the_field(overrides: dict[str, Any], expected: str) -> None:
    assert error_for(**overrides).startswith(expected)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("x" * 65 + "@example.org", "(local part longer than 64 octets)"),
        ("é" * 33 + "@example.org", "(local part longer than 64 octets)"),
        ("bob@" + "a" * 64 + ".org", "is not a DNS label)"),
        ("bob@" + ".".join(["a" * 63] * 4) + ".org", "(domain longer than 253 octets)"),
        ("x" * 64 + "@" + ".".join(["a" * 60] * 3) + ".example", "(longer than 254 octets)"),
        ("bob@192.0.2.1", "(numeric top-level domain, as in an IP address)"),
        ("bob@[192.0.2.1]", "(address literals are not accepted)"),
        ("bob@bü_cher.example", "(domain is not valid IDNA:"),
    ],
)
def test_address_errors_say_why(address: str, reason: str) -> None:
    message = error_for(to=[address])
    assert message.startswith("to[0]: ")
    assert reason in message


@pytest.mark.parametrize("missing", ["sender", "subject"])
def test_a_missing_required_field_is_named(missing: str) -> None:
    data = fields()
    del data[missing]
    with pytest.raises(InvalidNotification, match=rf"^{missing}: is required$"):
        Notification.validate_dict(data)


def test_invalid_notification_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^to: no recipient"):
        Notification.validate_dict(fields(to=[]))


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(InvalidNotification, match=r"^notification: "):
        Notification.validate_dict(["sender"])  # type: ignore[arg-type]


VALID_ADDRESSES: list[tuple[str, str, str]] = [
    # (as given, bare envelope form, display name)
    ("alice@example.org", "alice@example.org", ""),
    ("Alice <alice@example.org>", "alice@example.org", "Alice"),
    ('"Doe, Alice" <alice@example.org>', "alice@example.org", "Doe, Alice"),
    ('"Alice \\"Al\\" Doe" <alice@example.org>', "alice@example.org", 'Alice "Al" Doe'),
    ("Alice  \t Doe <alice@example.org>", "alice@example.org", "Alice Doe"),
    ("<alice@example.org>", "alice@example.org", ""),
    ("Ålice Dœ <alice@example.org>", "alice@example.org", "Ålice Dœ"),
    ("alice+tag@Example.ORG", "alice+tag@example.org", ""),
    ("Alice.B@example.org", "Alice.B@example.org", ""),
    ("o'brien!#$%&*=?^_`{|}~-/@example.org", "o'brien!#$%&*=?^_`{|}~-/@example.org", ""),
    ('"alice smith"@example.org', '"alice smith"@example.org', ""),
    ('"a@b"@example.org', '"a@b"@example.org', ""),
    ("alice@bücher.example", "alice@xn--bcher-kva.example", ""),
    ("alice@BÜCHER.example", "alice@xn--bcher-kva.example", ""),
    ("alice@xn--bcher-kva.example", "alice@xn--bcher-kva.example", ""),
    ("用户@例子.广告", "用户@例子.广告", ""),  # non-ASCII local part: U-labels, SMTPUTF8
    ("用户@xn--bcher-kva.example", "用户@bücher.example", ""),
    ("alice@localhost", "alice@localhost", ""),
    ("x" * 64 + "@example.org", "x" * 64 + "@example.org", ""),
    ("bob@" + "a" * 63 + ".org", "bob@" + "a" * 63 + ".org", ""),
]


@pytest.mark.parametrize(("given", "bare", "name"), VALID_ADDRESSES)
def test_valid_addresses_keep_names_for_headers_and_bare_form_for_envelope(
    given: str, bare: str, name: str
) -> None:
    notification = Notification.validate_dict(fields(to=[given], sender=given))
    assert notification.envelope_recipients() == [bare]
    assert notification.envelope_sender() == bare
    (box,) = notification.to_mailboxes
    assert box.display_name == name
    assert notification.sender_mailbox.display_name == name
    assert notification.to == [given]  # the field keeps what the producer gave


def test_envelope_recipients_are_to_cc_bcc_deduplicated_in_order() -> None:
    notification = Notification.validate_dict(
        fields(
            to=["Alice <alice@example.org>", "bob@bücher.example"],
            cc=["carol@example.org", "alice@EXAMPLE.org"],
            bcc=["Bob@example.org", "bob@xn--bcher-kva.example", "dave@example.net"],
        )
    )
    assert notification.envelope_recipients() == [
        "alice@example.org",
        "bob@xn--bcher-kva.example",
        "carol@example.org",
        "Bob@example.org",  # local parts are case-sensitive (RFC 5321 §2.4)
        "dave@example.net",
    ]


def test_bcc_alone_is_enough_and_tuples_are_accepted() -> None:
    notification = Notification.validate_dict(
        fields(to=(), cc=(), bcc=("hidden@example.org",), text=None, html="<p>hi</p>")
    )
    assert notification.envelope_recipients() == ["hidden@example.org"]
    assert notification.to == []


@pytest.mark.parametrize(
    ("sender", "to", "expected"),
    [
        ("app@example.com", ["alice@bücher.example"], False),
        ("app@example.com", ["alice@example.org", "用户@example.org"], True),
        ("app用户@example.com", ["alice@example.org"], True),
    ],
)
def test_smtputf8_is_needed_only_for_non_ascii_local_parts(
    sender: str, to: list[str], expected: bool
) -> None:
    assert Notification.validate_dict(fields(sender=sender, to=to)).needs_smtputf8() is expected


def test_the_model_is_frozen_and_keeps_every_field() -> None:
    notification = Notification.validate_dict(
        fields(
            html="<p>Hi</p>",
            cc=["c@example.org"],
            bcc=["b@example.org"],
            headers={"Reply-To": "Support <help@example.com>", "X-Campaign": "spring"},
            idempotency_key="order-42",
        )
    )
    assert set(Notification.model_fields) == {
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "text",
        "html",
        "headers",
        "idempotency_key",
        "list_unsubscribe",
        "one_click",
        "reply_to",
        "attachments",
        "tags",
        "metadata",
    }
    assert notification.headers == {
        "Reply-To": "Support <help@example.com>",
        "X-Campaign": "spring",
    }
    assert notification.idempotency_key == "order-42"
    with pytest.raises(ValueError, match="frozen"):
        notification.subject = "changed"


def test_reply_to_takes_one_address_or_several_and_none_by_default() -> None:
    one = Notification.validate_dict(fields(reply_to="Help <help@example.com>"))
    assert [(b.display_name, b.address) for b in one.reply_to_mailboxes] == [
        ("Help", "help@example.com")
    ]
    several = Notification.validate_dict(fields(reply_to=("a@example.org", "b@bücher.example")))
    assert [b.address for b in several.reply_to_mailboxes] == [
        "a@example.org",
        "b@xn--bcher-kva.example",
    ]
    assert Notification.validate_dict(fields()).reply_to_mailboxes == ()
    # Reply-To addresses are no recipients; a non-ASCII local part makes the header UTF-8.
    utf8 = Notification.validate_dict(fields(reply_to=["用户@example.org"]))
    assert utf8.envelope_recipients() == ["alice@example.org"]
    assert utf8.needs_smtputf8()


def test_text_defaults_to_none_so_html_alone_is_enough() -> None:
    data = fields(html="<p>Hi</p>")
    del data["text"]
    notification = Notification.validate_dict(data)
    assert notification.text is None
    assert notification.html == "<p>Hi</p>"


@pytest.mark.parametrize(
    "value",
    [
        "plain ascii",
        "Grüße, 世界 🎉",
        "emoji with joiner 👩\u200d💻",
        "tab\tinside",
        "",
        "=?utf-8?q?looks_encoded?=",
        "a" * 10_000,
    ],
)
def test_acceptable_subjects(value: str) -> None:
    assert Notification.validate_dict(fields(subject=value)).subject == value


def test_tags_and_metadata_are_kept_as_compact_json() -> None:
    notification = Notification.validate_dict(
        fields(tags=["invoice", "eu"], metadata={"invoice_id": "42", "tenant": "Zoë GmbH"})
    )
    assert notification.labels() == (
        '{"tags":["invoice","eu"],"metadata":{"invoice_id":"42","tenant":"Zoë GmbH"}}'
    )
    assert Notification.validate_dict(fields()).labels() == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tags": ["a"] * 11}, "tags: more than 10"),
        ({"tags": ["a", "a"]}, "tags: a tag is given twice"),
        ({"tags": [""]}, r"tags\[0\]: must be 1 to 100 characters"),
        ({"tags": ["x\ny"]}, r"tags\[0\]: contains a control"),
        ({"tags": [7]}, r"tags\[0\]: must be a string"),
        ({"metadata": {"k": 42}}, r"metadata\['k'\]: must be a string"),
        ({"metadata": {"k" * 65: "v"}}, "metadata key: must be 1 to 64"),
        ({"metadata": {str(n): "v" for n in range(21)}}, "more than 20 keys"),
        ({"metadata": {f"k{n}": "v" * 400 for n in range(12)}}, "more than 4096 octets"),
    ],
)
def test_bad_tags_and_metadata_are_one_line(extra: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidNotification, match=message):
        Notification.validate_dict(fields(**extra))
