"""Attachments as producers give them, validated into `Attachment` values before anything is stored.

An attachment is a mapping `{"filename", "content", "content_type", "inline", "content_id"}`:
`content` is bytes; `content_type` is guessed from the filename when absent (`mimetypes`); an
inline part (`"inline": True`) needs a `content_id`, which the HTML refers to as `cid:…`. The
Python API also takes a path (`str` or `os.PathLike`) for a whole attachment, or a
`pathlib.Path` as `content`: `load_paths` reads those, bounded by MAX_MESSAGE_BYTES, before
validation. The `mailroom.notify` task takes `content_b64` instead of `content`, because task
arguments are JSON, and never a path (the worker's files are not the producer's):
`decode_task_attachments` turns it into bytes. Every failure is an `InvalidNotification` whose one
line names the attachment and its key (`attachments[1].filename: …`).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.header_text import InvalidNotification, check_header_text

MAX_FILENAME_CHARS = 255  # what most file systems keep of a name
MAX_CONTENT_TYPE_CHARS = 76  # a fold after "Content-Type:" keeps it within 78 characters
MAX_CONTENT_ID_CHARS = 74  # "Content-ID: <…>" within 78 characters
KEYS = frozenset({"filename", "content", "content_type", "inline", "content_id"})
_TASK_KEYS = (KEYS - {"content"}) | {"content_b64"}
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 2045 §5.1 token
# type/subtype, and for text a charset (a text attachment's octets are read in it).
_CONTENT_TYPE = re.compile(rf'({_TOKEN})/({_TOKEN})(?:; *charset=("?)({_TOKEN})\3)?', re.I)
# Content-ID as clients write and read it: RFC 5322 atext, dots and one or more "@".
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]+")
_SEPARATORS = ("/", "\\")
# RFC 2046 §5.1.1 and RFC 2045 §6.4: multipart and message parts may not be base64-encoded.
_COMPOSITE = ("multipart", "message")


@dataclass(frozen=True, slots=True)
class Attachment:
    """One validated attachment; `content_type` is lower-case `type/subtype`, followed by
    `; charset=…` for a text part whose producer named its charset."""

    filename: str
    content: bytes = field(repr=False)
    content_type: str
    inline: bool = False
    content_id: str | None = None  # without angle brackets; set exactly when `inline`


def parse_attachment(location: str, value: object) -> Attachment:
    """Validate one attachment as a producer gave it (an `Attachment` value is checked too: it
    may have been built by hand).

    :raises InvalidNotification: naming `location` (`attachments[0]`) and the key.
    """
    if isinstance(value, Attachment):
        value = {key: getattr(value, key) for key in KEYS}
    if isinstance(value, str | os.PathLike):
        raise InvalidNotification(
            f"{location}: a path is read by notify() and notify_many(), not by Notification"
        )
    if not isinstance(value, Mapping):
        raise InvalidNotification(f"{location}: is not a mapping of {', '.join(sorted(KEYS))}")
    for key in value:
        if key not in KEYS:
            raise InvalidNotification(f"{location}.{key}: is not a known field")
    filename = _filename(f"{location}.filename", value.get("filename"))
    content = value.get("content")
    if isinstance(content, bytearray | memoryview):
        content = bytes(content)
    if not isinstance(content, bytes):
        given = "is required" if content is None else f"must be bytes, not {type(content).__name__}"
        raise InvalidNotification(f"{location}.content: {given}")
    inline = value.get("inline", False)
    if not isinstance(inline, bool):
        raise InvalidNotification(f"{location}.inline: must be true or false")
    content_id = _content_id(f"{location}.content_id", value.get("content_id"), inline=inline)
    content_type = _content_type(f"{location}.content_type", value.get("content_type"), filename)
    return Attachment(filename, content, content_type, inline, content_id)


def _filename(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidNotification(
            f"{field}: is required" if value is None else f"{field}: not text"
        )
    # Readers drop whitespace at either end of a parameter value: it is dropped here, so that
    # the name written is the name read.
    value = value.strip()
    if not value:
        raise InvalidNotification(f"{field}: is empty")
    check_header_text(field, value)  # line breaks, control characters, lone surrogates
    if any(separator in value for separator in _SEPARATORS) or value in (".", ".."):
        # A reader that saves the part under its name must not be led out of its folder.
        raise InvalidNotification(f"{field}: {_shown(value)} is a path, not a file name")
    if len(value) > MAX_FILENAME_CHARS:
        raise InvalidNotification(f"{field}: longer than {MAX_FILENAME_CHARS} characters")
    return value


def _content_type(field: str, value: object, filename: str) -> str:
    if value is None:
        guessed, encoding = mimetypes.guess_type(filename, strict=False)
        if encoding is not None:  # "report.csv.gz" is gzip data, whatever it holds
            return "application/gzip" if encoding == "gzip" else "application/octet-stream"
        return (guessed or "application/octet-stream").lower()
    if not isinstance(value, str):
        raise InvalidNotification(f"{field}: not text")
    match = _CONTENT_TYPE.fullmatch(value)
    if match is None:
        raise InvalidNotification(f"{field}: {_shown(value)} is not a 'type/subtype' media type")
    kind, subtype, charset = match[1].lower(), match[2].lower(), match[4]
    if kind in _COMPOSITE:
        raise InvalidNotification(f"{field}: {kind}/* parts cannot be attached")
    if charset is not None and kind != "text":
        raise InvalidNotification(f"{field}: a charset is for text/* parts only")
    written = f"{kind}/{subtype}" if charset is None else f"{kind}/{subtype}; charset={charset}"
    if len(written) > MAX_CONTENT_TYPE_CHARS:
        raise InvalidNotification(f"{field}: longer than {MAX_CONTENT_TYPE_CHARS} characters")
    return written.lower()


def _content_id(field: str, value: object, *, inline: bool) -> str | None:
    if value is None:
        if inline:
            raise InvalidNotification(f"{field}: is required for an inline part")
        return None
    if not inline:
        raise InvalidNotification(f"{field}: only an inline part has one (set inline)")
    if not isinstance(value, str):
        raise InvalidNotification(f"{field}: not text")
    bare = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    if not _CONTENT_ID.fullmatch(bare):
        raise InvalidNotification(f"{field}: {_shown(value)} is not a valid Content-ID")
    if len(bare) > MAX_CONTENT_ID_CHARS:
        raise InvalidNotification(f"{field}: longer than {MAX_CONTENT_ID_CHARS} characters")
    return bare


def load_paths(fields: Mapping[str, Any], max_bytes: int) -> Mapping[str, Any]:
    """`fields` with every attachment given as a path read into `{"filename", "content"}`.

    An entry that is a path (`str` or `os.PathLike`) becomes an attachment named after the
    file; a mapping whose `content` is an `os.PathLike` gets the file's bytes (and its name, if
    it has no `filename`). Only regular files are read, at most `max_bytes` in all.

    :raises InvalidNotification: a path that is not a readable regular file, or files above
        `max_bytes` (nothing is read past it).
    """
    given = fields.get("attachments")
    if not isinstance(given, list | tuple) or not any(map(_has_path, given)):
        return fields
    loaded: list[Any] = []
    budget = max_bytes
    for index, entry in enumerate(given):
        location = f"attachments[{index}]"
        if isinstance(entry, str | os.PathLike):
            content = _read(location, entry, budget, max_bytes)
            loaded.append({"filename": _basename(entry), "content": content})
        elif isinstance(entry, Mapping) and isinstance(entry.get("content"), os.PathLike):
            path = entry["content"]
            content = _read(f"{location}.content", path, budget, max_bytes)
            loaded.append({"filename": _basename(path), **entry, "content": content})
        else:
            loaded.append(entry)
            continue
        budget -= len(content)
    return {**fields, "attachments": loaded}


def _has_path(entry: object) -> bool:
    return isinstance(entry, str | os.PathLike) or (
        isinstance(entry, Mapping) and isinstance(entry.get("content"), os.PathLike)
    )


def _basename(path: str | os.PathLike[Any]) -> str:
    return Path(os.fsdecode(path)).name


def _read(location: str, path: str | os.PathLike[Any], budget: int, max_bytes: int) -> bytes:
    shown = _shown(os.fsdecode(path))
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just after.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # a FIFO or device never ends
                raise InvalidNotification(f"{location}: {shown} is not a regular file")
            data = file.read(budget + 1)
    except OSError as exc:
        raise InvalidNotification(f"{location}: cannot read {shown}: {exc.strerror}") from None
    if len(data) > budget:
        raise InvalidNotification(
            f"{location}: {shown} takes the attachments above MAX_MESSAGE_BYTES {max_bytes}"
        )
    return data


def decode_task_attachments(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `mailroom.notify` task's fields with each attachment's `content_b64` decoded.

    Task attachments are JSON objects with `content_b64` (standard base64, line breaks allowed)
    in place of `content`; a path or a `content` key is refused, so a task can never make a
    worker read its own files.

    :raises InvalidNotification: naming the attachment and key.
    """
    given = fields.get("attachments")
    if given is None:
        return fields
    if not isinstance(given, list):
        raise InvalidNotification("attachments: must be a list")
    decoded: list[dict[str, Any]] = []
    for index, entry in enumerate(given):
        location = f"attachments[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidNotification(f"{location}: must be an object with content_b64")
        for key in entry:
            if key not in _TASK_KEYS:
                raise InvalidNotification(f"{location}.{key}: is not a known field")
        text = entry.get("content_b64")
        if not isinstance(text, str):
            raise InvalidNotification(f"{location}.content_b64: is required (base64 text)")
        try:
            content = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidNotification(f"{location}.content_b64: is not valid base64") from None
        rest = {key: value for key, value in entry.items() if key != "content_b64"}
        decoded.append({**rest, "content": content})
    return {**fields, "attachments": decoded}


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")
