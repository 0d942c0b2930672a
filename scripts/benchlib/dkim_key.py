"""`--dkim rsa|ed25519`: a throwaway signing key for the sender's domain, written into the run's
temporary directory (deleted with it), as the DKIM_KEYS value of the benchmark deployment."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

ALGORITHMS = ("rsa", "ed25519")
SELECTOR = "bench"


def dkim_keys(algorithm: str, domain: str, folder: Path) -> str:
    """MAILROOM_DKIM_KEYS for one fresh key (RSA-2048 or Ed25519) signing mail From `domain`."""
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    path = folder / f"dkim-{algorithm}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return json.dumps([{"domain": domain, "selector": SELECTOR, "key_file": str(path)}])
