"""DKIM test keys, their DNS records served by a real dnsmasq, and dkimpy's verifier reading them.

`dkim_keys` (session) writes an RSA-2048 and an Ed25519 key for `DOMAIN` (selectors `rsa` and
`ed`), a second RSA key for `OTHER_DOMAIN` with `subdomains`, and an Ed25519 key for
`SUBMISSION_DOMAIN`; `dkim_dns` serves their records
(`v=DKIM1; k=…; p=…`) from dnsmasq, and `verify(data, dns, index)` runs `dkim.DKIM.verify` with a
`dnsfunc` that queries that server through dnspython: verification really goes through DNS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from settings.dkim import DkimKey
from tasks.dkim.keys import SigningKey, load_signing_keys
from tests.support.dns_server import DnsServer, Txt, Zone, txt

DOMAIN = "mailroom.test"  # signed with RSA (selector rsa) and Ed25519 (selector ed)
OTHER_DOMAIN = "parent.test"  # signed with RSA (selector s1), subdomains too
SUBMISSION_DOMAIN = "example.test"  # the submission tests' sender domain: Ed25519, selector sub


@dataclass(frozen=True, slots=True)
class KeySet:
    """The configured keys (as DKIM_KEYS gives them) and the same keys loaded."""

    configs: tuple[DkimKey, ...]
    loaded: tuple[SigningKey, ...]

    def only(self, *selectors: str) -> tuple[SigningKey, ...]:
        """The loaded keys with these selectors, in that order."""
        return tuple(k for s in selectors for k in self.loaded if k.config.selector == s)


def write_key(path: Path, algorithm: str) -> Path:
    """Write a fresh unencrypted PKCS#8 PEM key ("rsa": 2048 bits, or "ed25519") to `path`."""
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="session")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    """Four keys: rsa and ed for DOMAIN, s1 (RSA, subdomains) for OTHER_DOMAIN, and sub
    (Ed25519) for SUBMISSION_DOMAIN."""
    folder = tmp_path_factory.mktemp("dkim")
    configs = (
        DkimKey(DOMAIN, "rsa", write_key(folder / "rsa.pem", "rsa")),
        DkimKey(DOMAIN, "ed", write_key(folder / "ed.pem", "ed25519")),
        DkimKey(OTHER_DOMAIN, "s1", write_key(folder / "s1.pem", "rsa"), subdomains=True),
        DkimKey(SUBMISSION_DOMAIN, "sub", write_key(folder / "sub.pem", "ed25519")),
    )
    return KeySet(configs, load_signing_keys(configs))


def records(keys: tuple[SigningKey, ...]) -> tuple[Txt, ...]:
    """The TXT records publishing `keys`, as an operator would (README, "Deliverability")."""
    return tuple(
        txt(key.config.record_name, f"v=DKIM1; k={key.key_type}; p={key.public_record}")
        for key in keys
    )


@pytest.fixture(scope="session")
def dkim_dns(dkim_keys: KeySet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """dnsmasq serving the public records of `dkim_keys`."""
    zone = Zone(txt=records(dkim_keys.loaded))
    with DnsServer(zone, tmp_path_factory.mktemp("dkim-dns")) as server:
        yield server


def txt_lookup(server: DnsServer) -> Callable[..., bytes | None]:
    """dkimpy's `dnsfunc`: the TXT record of a name, asked of `server` over UDP."""

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii") if isinstance(name, bytes) else name
        query = dns.message.make_query(text, dns.rdatatype.TXT)
        response = dns.query.udp(query, server.ip, port=server.port, timeout=min(timeout, 5))
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(next(iter(rrset)).strings)
        return None

    return lookup


def verify(data: bytes, server: DnsServer, index: int = 0) -> bool:
    """dkimpy's verdict on the message's `index`-th DKIM-Signature (0: the topmost); a message
    dkimpy refuses (a body hash mismatch is an exception there) is False."""
    try:
        return bool(dkim.DKIM(data).verify(idx=index, dnsfunc=txt_lookup(server)))
    except dkim.ValidationError:
        return False
