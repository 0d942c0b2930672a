"""Tags and metadata of a submitted message: the `X-Mailroom-Tags` (comma-separated) and
`X-Mailroom-Metadata` (a JSON object) header fields, taken out of the message before it is queued
(receivers never see them) and checked like `notify(tags=…, metadata=…)`."""

from __future__ import annotations

import json
import re

from tasks.labels import check_metadata, check_tags, labels_json
from tasks.notification import InvalidNotification

TAGS_FIELD = b"x-mailroom-tags"
METADATA_FIELD = b"x-mailroom-metadata"
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")  # RFC 5322 §3.6.8, as headers.py reads
_CONTINUATION = (b" ", b"\t")


def take_labels(data: bytes) -> tuple[bytes, str]:
    """The message without the two fields, and the labels JSON they give ("" for none).

    :raises InvalidNotification: a field that is not valid UTF-8 or not what it must hold, or
        given twice; one line naming the field.
    """
    lines = data.splitlines(keepends=True)
    kept: list[bytes] = []
    found: dict[bytes, bytes] = {}
    taking: bytes | None = None
    for index, line in enumerate(lines):
        if line.startswith(_CONTINUATION) and index > 0:
            if taking is not None:
                found[taking] += b" " + line.strip()
            else:
                kept.append(line)
            continue
        match = _FIELD.match(line)
        if match is None:  # the end of the header section
            kept += lines[index:]
            break
        name = match[1].lower()
        if name in (TAGS_FIELD, METADATA_FIELD):
            if name in found:
                raise InvalidNotification(f"{_shown(name)}: given twice")
            found[name] = line[match.end() :].strip()
            taking = name
        else:
            taking = None
            kept.append(line)
    if not found:
        return data, ""
    return b"".join(kept), labels_json(_tags(found.get(TAGS_FIELD)), _metadata(found))


def _tags(raw: bytes | None) -> list[str]:
    if raw is None:
        return []
    text = _text(TAGS_FIELD, raw)
    return check_tags([tag.strip() for tag in text.split(",") if tag.strip()])


def _metadata(found: dict[bytes, bytes]) -> dict[str, str]:
    raw = found.get(METADATA_FIELD)
    if raw is None:
        return {}
    try:
        value = json.loads(_text(METADATA_FIELD, raw))
    except json.JSONDecodeError:
        raise InvalidNotification(f"{_shown(METADATA_FIELD)}: not a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidNotification(f"{_shown(METADATA_FIELD)}: not a JSON object")
    return check_metadata(value)


def _text(name: bytes, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidNotification(f"{_shown(name)}: not UTF-8") from None


def _shown(name: bytes) -> str:
    return "X-Mailroom-Tags" if name == TAGS_FIELD else "X-Mailroom-Metadata"
