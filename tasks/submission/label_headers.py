"""Tags and metadata of a submitted message: the `X-Mailroom-Tags` (comma-separated) and
`X-Mailroom-Metadata` (a JSON object) header fields, taken out of the message before it is queued
(receivers never see them) and checked like `notify(tags=…, metadata=…)`."""

from __future__ import annotations

import json

from tasks.labels import check_metadata, check_tags, labels_json
from tasks.notification import InvalidNotification
from tasks.submission.headers import split_fields

TAGS_FIELD = b"x-mailroom-tags"
METADATA_FIELD = b"x-mailroom-metadata"


def take_labels(data: bytes) -> tuple[bytes, str]:
    """The message without the two fields, and the labels JSON they give ("" for none); a
    message without them comes back as it is, byte for byte.

    :raises InvalidNotification: a field that is not valid UTF-8 or not what it must hold, or
        given twice; one line naming the field.
    """
    fields, rest = split_fields(data)
    found: dict[bytes, bytes] = {}
    kept: list[bytes] = []
    for name, group in fields:
        if name not in (TAGS_FIELD, METADATA_FIELD):
            kept += group
            continue
        if name in found:
            raise InvalidNotification(f"{_shown(name)}: given twice")
        # Unfolded: the value after the colon, and each continuation line, joined by a space.
        first = group[0].partition(b":")[2]
        found[name] = b" ".join(part.strip() for part in (first, *group[1:]))
    if not found:
        return data, ""
    tags = _tags(found.get(TAGS_FIELD))
    return b"".join(kept + rest), labels_json(tags, _metadata(found))


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
