"""Tokens as Redis keeps them: sealed with AES-GCM under a key derived (HKDF-SHA256) from the
client's own secret, so whoever reads Redis without that secret cannot use the token."""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from workers.oauth.tokens import Token

_INFO = b"mailroom oauth token cache v1"
_NONCE_BYTES = 12


def sealing_key(secret: bytes, context: bytes) -> AESGCM:
    """The cipher for tokens of one cache key (`context`), from the client's `secret`."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=context, info=_INFO).derive(secret)
    return AESGCM(key)


def seal(cipher: AESGCM, token: Token, context: bytes) -> bytes:
    """`token` encrypted and authenticated, bound to `context` (its cache key)."""
    plain = json.dumps({"v": token.value, "exp": token.expires_at, "scopes": token.scopes})
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + cipher.encrypt(nonce, plain.encode(), context)


def unseal(cipher: AESGCM, sealed: bytes, context: bytes) -> Token | None:
    """The token `seal` made, or None when it was sealed under another secret or is damaged."""
    if len(sealed) <= _NONCE_BYTES:
        return None
    try:
        plain = cipher.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context)
        data = json.loads(plain)
        return Token(str(data["v"]), float(data["exp"]), tuple(map(str, data["scopes"])))
    except (InvalidTag, ValueError, KeyError, TypeError):
        return None
