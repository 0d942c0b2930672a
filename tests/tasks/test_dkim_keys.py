"""Reading the DKIM keys: the algorithm follows the key, the public value is the record's p=, and
every unusable file is one line that names it and never shows its content."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from settings.dkim import DkimKey
from tasks.dkim.keys import DkimKeyError, keys_for, load_signing_key, load_signing_keys

_PKCS8 = serialization.PrivateFormat.PKCS8


def _write(path: Path, key: object, fmt: serialization.PrivateFormat = _PKCS8) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())  # type: ignore[attr-defined]
    )
    return path


def test_rsa_and_ed25519_keys_give_their_algorithms_and_records(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_file = _write(tmp_path / "rsa.pem", rsa_key, serialization.PrivateFormat.TraditionalOpenSSL)
    ed_file = _write(tmp_path / "ed.pem", ed_key)
    loaded = load_signing_keys(
        [DkimKey("example.com", "r", rsa_file), DkimKey("example.com", "e", ed_file)]
    )
    assert [(k.algorithm, k.key_type) for k in loaded] == [
        ("rsa-sha256", "rsa"),
        ("ed25519-sha256", "ed25519"),
    ]
    spki = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64decode(loaded[0].public_record) == spki
    raw = ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert base64.b64decode(loaded[1].public_record) == raw
    assert "PRIVATE" not in repr(loaded)
    assert "r._domainkey.example.com" in repr(loaded[0])
    assert keys_for(loaded, "example.com") == list(loaded)
    assert keys_for(loaded, "other.example") == []


def test_a_short_rsa_key_is_refused(tmp_path: Path) -> None:
    key_file = _write(tmp_path / "k.pem", rsa.generate_private_key(65537, 1024))
    with pytest.raises(DkimKeyError, match="1024 bits; DKIM needs at least 2048"):
        load_signing_key(DkimKey("example.com", "s", key_file))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        (b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGJ5dGVz\n-----END PRIVATE KEY-----\n", "not an"),
        (b"x" * 70_000, "larger than"),
    ],
)
def test_unusable_files_are_one_line_without_their_content(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    key_file = tmp_path / "key.pem"
    if content is not None:
        key_file.write_bytes(content)
    with pytest.raises(DkimKeyError, match=message) as caught:
        load_signing_key(DkimKey("example.com", "s", key_file))
    text = str(caught.value)
    assert text.startswith(f"DKIM_KEYS: s._domainkey.example.com: key_file {key_file}")
    assert "\n" not in text
    assert "c2VjcmV0" not in text


def test_a_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    key_file = _write(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(DkimKeyError, match="not an RSA or Ed25519 key"):
        load_signing_key(DkimKey("example.com", "s", key_file))
