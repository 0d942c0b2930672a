"""Tags and metadata: what a producer attaches to a notification to recognise its events later.

They travel with the message's status record (the `labels` field, JSON), never in a task's
arguments, and come back in every event of the message. Bounded, so a producer cannot make each
event of a message carry kilobytes: at most 10 tags of 100 characters, and 20 metadata keys of
64 characters with string values of 500 characters, 4,096 octets in all. Control characters are
refused, as they would be in a header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tasks.header_text import InvalidNotification

MAX_TAGS = 10
MAX_TAG_CHARS = 100
MAX_METADATA_KEYS = 20
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 500
MAX_LABEL_OCTETS = 4096


def check_tags(tags: Sequence[Any]) -> list[str]:
    """The tags, checked; InvalidNotification names the first bad one."""
    if len(tags) > MAX_TAGS:
        raise InvalidNotification(f"tags: more than {MAX_TAGS}")
    for index, tag in enumerate(tags):
        _check_text(f"tags[{index}]", tag, MAX_TAG_CHARS)
    if len(set(tags)) != len(tags):
        raise InvalidNotification("tags: a tag is given twice")
    return list(tags)


def check_metadata(metadata: Mapping[Any, Any]) -> dict[str, str]:
    """The metadata, checked; InvalidNotification names the first bad key or value."""
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidNotification(f"metadata: more than {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        _check_text("metadata key", key, MAX_KEY_CHARS)
        _check_text(f"metadata[{key!r}]", value, MAX_VALUE_CHARS)
    return dict(metadata)


def labels_json(tags: Sequence[str], metadata: Mapping[str, str]) -> str:
    """What the status record keeps ("" when there is nothing to keep).

    :raises InvalidNotification: the two together exceed MAX_LABEL_OCTETS.
    """
    if not tags and not metadata:
        return ""
    labels: dict[str, Any] = {}
    if tags:
        labels["tags"] = list(tags)
    if metadata:
        labels["metadata"] = dict(metadata)
    text = json.dumps(labels, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > MAX_LABEL_OCTETS:
        raise InvalidNotification(f"tags and metadata: more than {MAX_LABEL_OCTETS} octets")
    return text


def _check_text(where: str, value: Any, most: int) -> None:
    if not isinstance(value, str):
        raise InvalidNotification(f"{where}: must be a string")
    if not value or len(value) > most:
        raise InvalidNotification(f"{where}: must be 1 to {most} characters")
    if not value.isprintable():
        raise InvalidNotification(f"{where}: contains a control or unprintable character")
