"""The text of a Redis reply: the clients here keep decode_responses off (message bodies are bytes),
so every string a script or a hash returns arrives as bytes and is decoded in this one place."""

from __future__ import annotations


def redis_text(value: bytes | str) -> str:
    """The reply as text, whether the client decoded it already or not."""
    return value.decode() if isinstance(value, bytes) else value
