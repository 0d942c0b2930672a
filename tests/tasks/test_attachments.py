"""Tests for tasks/attachments.py: attachments validated as a Notification field, paths read by the
API (files on disk, a FIFO, a folder), and the task's `content_b64` decoded."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from tasks.attachments import Attachment, decode_task_attachments, load_paths
from tasks.notification import InvalidNotification, Notification


def fields(*attachments: Any, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sender": "app@example.com",
        "to": ["alice@example.org"],
        "subject": "Your invoice",
        "text": "attached",
        "html": '<p>attached <img src="cid:logo@example.com"></p>',
        "attachments": list(attachments),
    }
    base.update(overrides)
    return base


def pdf(**overrides: Any) -> dict[str, Any]:
    return {"filename": "invoice.pdf", "content": b"%PDF-1.7\n", **overrides}


def error_for(*attachments: Any, **overrides: Any) -> str:
    with pytest.raises(InvalidNotification) as caught:
        Notification.validate_dict(fields(*attachments, **overrides))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_valid_attachment_keeps_its_bytes_and_guesses_its_type() -> None:
    notification = Notification.validate_dict(fields(pdf(), {"filename": "a.bin", "content": b""}))
    first, second = notification.attachment_list
    assert first == Attachment("invoice.pdf", b"%PDF-1.7\n", "application/pdf", False, None)
    assert second.content_type == "application/octet-stream"
    assert "PDF" not in repr(first)  # the bytes stay out of logs
    again = Notification.validate_dict(fields(first))  # a validated value passes again
    assert again.attachment_list == [first]


@pytest.mark.parametrize(
    ("filename", "guessed"),
    [
        ("report.CSV", "text/csv"),
        ("photo.JPG", "image/jpeg"),
        ("data.csv.gz", "application/gzip"),
        ("no-extension", "application/octet-stream"),
        ("archive.tar.bz2", "application/octet-stream"),
    ],
)
def test_content_type_is_guessed_from_the_filename(filename: str, guessed: str) -> None:
    [attachment] = Notification.validate_dict(
        fields({"filename": filename, "content": b"x"})
    ).attachment_list
    assert attachment.content_type == guessed


def test_a_given_content_type_is_kept_in_lower_case_and_memoryview_is_bytes() -> None:
    given = pdf(content=memoryview(b"abc"), content_type="Application/X-Custom+JSON")
    [attachment] = Notification.validate_dict(fields(given)).attachment_list
    assert (attachment.content_type, attachment.content) == ("application/x-custom+json", b"abc")


@pytest.mark.parametrize(
    "given", ["text/csv; charset=UTF-8", 'Text/CSV;charset="utf-8"', "text/csv;  charset=utf-8"]
)
def test_a_text_part_may_name_its_charset(given: str) -> None:
    [attachment] = Notification.validate_dict(
        fields(pdf(filename="r.csv", content_type=given))
    ).attachment_list
    assert attachment.content_type == "text/csv; charset=utf-8"


def test_an_inline_part_takes_its_content_id_without_angle_brackets() -> None:
    logo = {"filename": "logo.png", "content": b"\x89PNG", "inline": True}
    [attachment] = Notification.validate_dict(
        fields({**logo, "content_id": "<logo@example.com>"})
    ).attachment_list
    assert (attachment.inline, attachment.content_id) == (True, "logo@example.com")


INVALID: list[tuple[list[Any], dict[str, Any], str]] = [
    ([pdf(filename="../etc/passwd")], {}, "attachments[0].filename: '../etc/passwd' is a path"),
    ([pdf(filename="a\\b.pdf")], {}, "attachments[0].filename: 'a\\\\b.pdf' is a path"),
    ([pdf(filename="..")], {}, "attachments[0].filename: '..' is a path"),
    ([pdf(filename="a\r\nb.pdf")], {}, "attachments[0].filename: contains a line break"),
    ([pdf(filename="a\x00.pdf")], {}, "attachments[0].filename: contains the control character"),
    ([pdf(filename="a\x1b.pdf")], {}, "attachments[0].filename: contains the control character"),
    ([pdf(filename=" ")], {}, "attachments[0].filename: is empty"),
    ([pdf(filename="x" * 256)], {}, "attachments[0].filename: longer than 255"),
    ([{"content": b"x"}], {}, "attachments[0].filename: is required"),
    ([pdf(filename=7)], {}, "attachments[0].filename: not text"),
    ([pdf(), pdf(content=None)], {}, "attachments[1].content: is required"),
    ([pdf(content="text")], {}, "attachments[0].content: must be bytes, not str"),
    ([pdf(content_type="pdf")], {}, "attachments[0].content_type: 'pdf' is not a 'type/subtype'"),
    ([pdf(content_type="a/b; x=y")], {}, "attachments[0].content_type: 'a/b; x=y' is not"),
    ([pdf(content_type="image/png; charset=utf-8")], {}, "attachments[0].content_type: a charset"),
    ([pdf(content_type="multipart/mixed")], {}, "attachments[0].content_type: multipart/*"),
    ([pdf(content_type="message/rfc822")], {}, "attachments[0].content_type: message/*"),
    ([pdf(inline="yes")], {}, "attachments[0].inline: must be true or false"),
    ([pdf(inline=True)], {}, "attachments[0].content_id: is required for an inline part"),
    ([pdf(content_id="x@y")], {}, "attachments[0].content_id: only an inline part"),
    ([pdf(inline=True, content_id="a b")], {}, "attachments[0].content_id: 'a b' is not a valid"),
    ([pdf(inline=True, content_id="c" * 75)], {}, "attachments[0].content_id: longer than 74"),
    (
        [pdf(inline=True, content_id="x"), pdf(inline=True, content_id="<x>")],
        {},
        "attachments[1].content_id: given twice",
    ),
    (
        [pdf(inline=True, content_id="x")],
        {"html": None},
        "attachments[0].inline: needs an html body",
    ),
    ([pdf(size=3)], {}, "attachments[0].size: is not a known field"),
    (["invoice.pdf"], {}, "attachments[0]: a path is read by notify()"),
    ([Attachment("../x", b"", "a/b")], {}, "attachments[0].filename: '../x' is a path"),
    ([42], {}, "attachments[0]: is not a mapping"),
]


@pytest.mark.parametrize(("attachments", "overrides", "expected"), INVALID)
def test_invalid_attachments_name_the_entry_and_key(
    attachments: list[Any], overrides: dict[str, Any], expected: str
) -> None:
    assert error_for(*attachments, **overrides).startswith(expected)


def test_paths_are_read_with_their_names(tmp_path: Path) -> None:
    report = tmp_path / "Bericht März.pdf"
    report.write_bytes(b"%PDF report")
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"\x89PNG logo")
    given = fields(
        str(report),
        {"content": logo, "inline": True, "content_id": "logo@example.com"},
        {"content": logo, "filename": "renamed.png"},
        pdf(),
    )
    loaded = load_paths(given, max_bytes=1000)
    notification = Notification.validate_dict(loaded)
    shown = [(a.filename, a.content, a.inline) for a in notification.attachment_list]
    assert shown == [
        ("Bericht März.pdf", b"%PDF report", False),
        ("logo.png", b"\x89PNG logo", True),
        ("renamed.png", b"\x89PNG logo", False),
        ("invoice.pdf", b"%PDF-1.7\n", False),
    ]
    assert load_paths(fields(pdf()), max_bytes=10) == fields(pdf())  # no path: as given


def test_unreadable_paths_are_refused_with_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    secret = tmp_path / "secret.pem"
    secret.write_bytes(b"key")
    secret.chmod(0)
    cases = {
        str(tmp_path / "missing.pdf"): "cannot read '",
        str(tmp_path): "Is a directory",
        str(fifo): "is not a regular file",  # never opened for reading, so never blocks
    }
    if os.geteuid() != 0:  # root reads any file
        cases[str(secret)] = "Permission denied"
    for path, problem in cases.items():
        with pytest.raises(InvalidNotification) as caught:
            load_paths(fields(path), max_bytes=1000)
        assert str(caught.value).startswith("attachments[0]: ")
        assert problem in str(caught.value)


def test_paths_above_the_message_limit_are_refused_before_reading_on(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 600)
    with pytest.raises(InvalidNotification, match=r"^attachments\[1\]: .*MAX_MESSAGE_BYTES 1000"):
        load_paths(fields(str(big), str(big)), max_bytes=1000)


def test_task_attachments_decode_content_b64() -> None:
    encoded = base64.encodebytes(bytes(range(256))).decode()  # with line breaks
    given = fields({"filename": "a.bin", "content_b64": encoded, "content_type": "x/y"})
    decoded = decode_task_attachments(given)
    [attachment] = Notification.validate_dict(decoded).attachment_list
    assert (attachment.content, attachment.content_type) == (bytes(range(256)), "x/y")
    assert decode_task_attachments({"to": ["a@example.org"]}) == {"to": ["a@example.org"]}


@pytest.mark.parametrize(
    ("attachments", "expected"),
    [
        ([{"filename": "a", "content_b64": "not base64!"}], "attachments[0].content_b64: is not"),
        ([{"filename": "a", "content_b64": "abc"}], "attachments[0].content_b64: is not valid"),
        ([{"filename": "a", "content_b64": "é"}], "attachments[0].content_b64: is not valid"),
        ([{"filename": "a"}], "attachments[0].content_b64: is required"),
        ([{"filename": "a", "content_b64": "", "content": "eA=="}], "attachments[0].content: is"),
        (["/etc/passwd"], "attachments[0]: must be an object with content_b64"),
        ("a.pdf", "attachments: must be a list"),
    ],
)
def test_bad_task_attachments_are_refused(attachments: Any, expected: str) -> None:
    with pytest.raises(InvalidNotification) as caught:
        decode_task_attachments(fields(attachments=attachments))
    assert str(caught.value).startswith(expected)
