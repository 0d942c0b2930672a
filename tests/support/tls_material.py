"""TLS certificates for tests: one trusted trustme CA, and certificates good and bad on purpose.

`TlsMaterial` owns a directory of PEM files. `ca_file` is the trusted CA's certificate, what
`MAILROOM_TLS_CA_FILE` points to in tests. It issues, for the server side of loopback tests:
- `server_cert(*names)`: signed by that CA for names ("relay.test", "127.0.0.2"): verifies;
- `wrong_name()`: signed by the same CA, but for "other.test" only: fails the host name check;
- `self_signed(*names)`: truly self-signed (made with `cryptography`): fails the chain check;
- `expired(*names)`: signed by the CA but no longer valid: fails the validity check.
Each has a `*_context` twin returning a server-side `ssl.SSLContext`, as aiosmtpd's `tls_context`
and `Controller(ssl_context=...)` take. Certificates are made once per names and cached.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

WRONG_NAME = "other.test"


@dataclass(frozen=True, slots=True)
class CertFiles:
    """A certificate chain and its private key, as PEM files, for the names it was issued to."""

    chain: Path
    key: Path
    names: tuple[str, ...]

    def server_context(self) -> ssl.SSLContext:
        """A fresh server-side context presenting this certificate (client certs not asked)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.chain, self.key)
        return context


class TlsMaterial:
    """A trusted test CA and the server certificates tests need, written under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA(organization_name="Mailroom tests")
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._cache: dict[tuple[str, tuple[str, ...]], CertFiles] = {}

    def server_cert(self, *names: str) -> CertFiles:
        """A certificate for `names` (host names or IP addresses), signed by the trusted CA."""
        return self._issued("trusted", names, lambda: self.ca.issue_cert(*names))

    def wrong_name(self) -> CertFiles:
        """A certificate signed by the trusted CA for "other.test" only."""
        return self.server_cert(WRONG_NAME)

    def expired(self, *names: str) -> CertFiles:
        """A certificate for `names` signed by the trusted CA that expired yesterday."""
        now = datetime.datetime.now(datetime.UTC)
        return self._issued(
            "expired",
            names,
            lambda: self.ca.issue_cert(
                *names,
                not_before=now - datetime.timedelta(days=10),
                not_after=now - datetime.timedelta(days=1),
            ),
        )

    def self_signed(self, *names: str) -> CertFiles:
        """A certificate for `names` that signs itself: no CA vouches for it."""
        key_name = ("self-signed", _names(names))
        if key_name not in self._cache:
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(key, hashes.SHA256())
            )
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            self._cache[key_name] = self._write(
                "self-signed", names, cert.public_bytes(serialization.Encoding.PEM), key_pem
            )
        return self._cache[key_name]

    def server_context(self, *names: str) -> ssl.SSLContext:
        """Server context presenting `server_cert(*names)`."""
        return self.server_cert(*names).server_context()

    def wrong_name_context(self) -> ssl.SSLContext:
        """Server context presenting `wrong_name()`."""
        return self.wrong_name().server_context()

    def expired_context(self, *names: str) -> ssl.SSLContext:
        """Server context presenting `expired(*names)`."""
        return self.expired(*names).server_context()

    def self_signed_context(self, *names: str) -> ssl.SSLContext:
        """Server context presenting `self_signed(*names)`."""
        return self.self_signed(*names).server_context()

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the test CA (for stdlib clients)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _issued(
        self, kind: str, names: tuple[str, ...], issue: Callable[[], trustme.LeafCert]
    ) -> CertFiles:
        key_name = (kind, _names(names))
        if key_name not in self._cache:
            leaf = issue()
            chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
            self._cache[key_name] = self._write(kind, names, chain, leaf.private_key_pem.bytes())
        return self._cache[key_name]

    def _write(self, kind: str, names: tuple[str, ...], chain: bytes, key: bytes) -> CertFiles:
        stem = f"{kind}-{len(self._cache)}"
        chain_path = self.directory / f"{stem}.crt.pem"
        key_path = self.directory / f"{stem}.key.pem"
        chain_path.write_bytes(chain)
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        return CertFiles(chain=chain_path, key=key_path, names=names)


def _names(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError("a certificate needs at least one name")
    return names


def _general_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return general


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """The session's trusted test CA and certificates (see `TlsMaterial`)."""
    return TlsMaterial(tmp_path_factory.mktemp("tls"))
