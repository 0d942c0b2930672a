"""The DKIM keys of MAILROOM_DKIM_KEYS, read from their files once at start-up.

The algorithm follows the key: RSA of at least 2048 bits signs `rsa-sha256` (RFC 8301 forbids
shorter keys for signers), Ed25519 signs `ed25519-sha256` (RFC 8463). A key that cannot be used
is one line naming the entry and the file, never the file's content. `public_record` gives the
`p=` value the DNS record must carry, which `mailroom check --sender-domain` compares.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from settings.dkim import DkimKey

MIN_RSA_BITS = 2048
_MAX_KEY_FILE = 64 * 1024  # PEM keys are a few KB; anything larger is not a key

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimKeyError(ValueError):
    """A configured key cannot be used: one line, naming the entry, never the key."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A usable key: its configuration, algorithm and the public value its record publishes."""

    config: DkimKey
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"
    key_type: str  # the record's k=: "rsa" or "ed25519"
    public_record: str  # the record's p= (base64)
    private: PrivateKey = field(repr=False)

    def __repr__(self) -> str:  # the private key never shows, even in a traceback's locals
        return f"SigningKey({self.config.record_name}, {self.algorithm})"


def load_signing_keys(keys: Sequence[DkimKey]) -> tuple[SigningKey, ...]:
    """Every configured key, read and checked.

    :raises DkimKeyError: a file is missing, unreadable, not a PEM private key, or an RSA key
        shorter than 2048 bits, or another kind of key.
    """
    return tuple(load_signing_key(key) for key in keys)


def load_signing_key(key: DkimKey) -> SigningKey:
    """One key, read and checked (see `load_signing_keys`)."""
    where = f"DKIM_KEYS: {key.record_name}: key_file {key.key_file}"
    private = _private_key(where, key.key_file)
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise DkimKeyError(
                f"{where}: an RSA key of {private.key_size} bits; DKIM needs at least "
                f"{MIN_RSA_BITS} (RFC 8301)"
            )
        spki = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return SigningKey(key, "rsa-sha256", "rsa", _b64(spki), private)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return SigningKey(key, "ed25519-sha256", "ed25519", _b64(raw), private)
    raise DkimKeyError(f"{where}: not an RSA or Ed25519 key")


def keys_for(keys: Sequence[SigningKey], domain: str) -> list[SigningKey]:
    """The keys that sign mail From `domain` (a lower-case A-label), in configured order."""
    return [key for key in keys if key.config.signs_for(domain)]


def _private_key(where: str, path: Path) -> PrivateKey:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise DkimKeyError(
            f"{where}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(data) > _MAX_KEY_FILE:
        raise DkimKeyError(f"{where}: larger than {_MAX_KEY_FILE} bytes; not a PEM private key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The library's message may quote the file; only the kind of failure is told.
        raise DkimKeyError(
            f"{where}: not an unencrypted PEM private key (PKCS#8 or traditional)"
        ) from None
    except Exception:
        raise DkimKeyError(f"{where}: not a usable private key") from None
    if not isinstance(private, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise DkimKeyError(f"{where}: not an RSA or Ed25519 key")
    return private


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
