"""The JWTs the test token endpoint checks: a Google service account's assertion (RS256, RFC
7523) and a Microsoft client assertion made from a certificate credential (PS256 or RS256, with
the certificate's thumbprint in the header); and the credentials it hands out for them."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import time
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    """A certificate for `key`, valid for a month, as an application's credential."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailroom-test")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _thumbprints(digest: bytes) -> tuple[str, str, str]:
    """A thumbprint as RFC 7515 writes it (base64url, unpadded), as msal does (base64url with
    its padding), and in plain base64."""
    padded = base64.urlsafe_b64encode(digest).decode()
    return b64(digest), padded, base64.b64encode(digest).decode()


def assertion_ok(
    form: dict[str, str], client: str, certificate: x509.Certificate | None, audience: str
) -> bool:
    """A client assertion (RFC 7523) signed by `client`'s certificate, PS256 with its SHA-256
    thumbprint (what msal sends given the certificate) or RS256 with its SHA-1 one."""
    if certificate is None or form.get("client_assertion_type") != CLIENT_ASSERTION:
        return False
    try:
        header_b64, payload_b64, signature_b64 = form["client_assertion"].split(".")
        header = json.loads(unb64(header_b64))
        claims = json.loads(unb64(payload_b64))
        der = certificate.public_bytes(serialization.Encoding.DER)
        signed = f"{header_b64}.{payload_b64}".encode()
        key = certificate.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        if header.get("alg") == "PS256":
            if header.get("x5t#S256") not in _thumbprints(hashlib.sha256(der).digest()):
                return False
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            key.verify(unb64(signature_b64), signed, pss, hashes.SHA256())
        elif header.get("alg") == "RS256":
            if header.get("x5t") not in _thumbprints(hashlib.sha1(der).digest()):
                return False
            key.verify(unb64(signature_b64), signed, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except (ValueError, KeyError, AssertionError, InvalidSignature):
        return False
    return (
        claims.get("iss") == client
        and claims.get("sub") == client
        and claims.get("aud") == audience
        and float(claims.get("exp", 0)) > time.time()
    )


def verified_claims(assertion: str, accounts: dict[str, rsa.RSAPublicKey]) -> dict[str, Any] | None:
    """The assertion's claims when its RS256 signature is its issuer's; None otherwise."""
    try:
        header_b64, payload_b64, signature_b64 = assertion.split(".")
        header = json.loads(unb64(header_b64))
        claims = json.loads(unb64(payload_b64))
        key = accounts[claims["iss"]]
        if header.get("alg") != "RS256":
            return None
        key.verify(
            unb64(signature_b64),
            f"{header_b64}.{payload_b64}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (ValueError, KeyError, InvalidSignature):
        return None
    return claims if isinstance(claims, dict) else None
