"""Benchmark: what DKIM signing costs per message, and which part of it is the key operation.

Signs the `cpu` scenario's message (about 2 KB of text, one recipient, as scripts/bench_e2e.py
sends) with a throwaway RSA-2048 and Ed25519 key, and times apart: the whole `Signer.sign`, the
canonicalisation and hashing it does before the key is used (relaxed body and header fields,
sha256), and the private-key operation alone (`cryptography`, OpenSSL). Prints the median CPU
time per message of --repeat runs of --count messages. Runs on one core, with no network;
bounded by --count, --repeat and --time-limit.

    PYTHONPATH=. .venv/bin/python scripts/bench_dkim.py [--count 5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benchlib.dkim_key import dkim_keys
from benchlib.scenarios import SENDER_DOMAIN, scenario
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding

from settings.dkim import parse_dkim_keys
from tasks.dkim.canonical import relaxed_body, relaxed_header, split_message
from tasks.dkim.keys import SigningKey, load_signing_keys
from tasks.dkim.signer import SIGNED_FIELDS, Signer
from tasks.message import build_message
from tasks.notification import Notification


def message() -> bytes:
    fields = scenario("cpu").notification(1, "user")
    built = build_message(
        Notification.validate_dict(fields),
        message_id="bench1",
        helo_domain=SENDER_DOMAIN,
        max_bytes=26_214_400,
    )
    return built.data


def canonical_hash(data: bytes) -> tuple[bytes, bytes]:
    """What the signer does before it uses a key: the body hash and the signed fields."""
    fields, body = split_message(data)
    head = b"".join(relaxed_header(f.raw) for f in fields if f.key in SIGNED_FIELDS)
    return hashlib.sha256(relaxed_body(body)).digest(), head


def key_operation(key: SigningKey) -> Callable[[bytes], bytes]:
    private = key.private
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return lambda data: private.sign(hashlib.sha256(data).digest())
    return lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256())


def cpu_per_call(work: Callable[[], object], count: int, repeat: int, deadline: float) -> float:
    timings: list[float] = []
    while len(timings) < repeat and (not timings or time.monotonic() < deadline):
        start = time.process_time()
        for _ in range(count):
            work()
        timings.append((time.process_time() - start) / count)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=5000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds, all told")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        print("bench_dkim: --count and --repeat must be at least 1", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.time_limit
    data = message()
    print(f"message of {len(data):,} bytes; median CPU µs per message of {args.repeat} runs\n")
    print(f"{'what':<44} {'CPU µs/msg':>10}")
    print("-" * 55)
    row = "{:<44} {:>10.1f}"
    canonical = cpu_per_call(lambda: canonical_hash(data), args.count, args.repeat, deadline)
    print(row.format("canonicalise + sha256 (no key)", canonical * 1e6))
    with tempfile.TemporaryDirectory(prefix="bench-dkim-") as folder:
        for algorithm in ("rsa", "ed25519"):
            setting = dkim_keys(algorithm, SENDER_DOMAIN, Path(folder))
            keys = load_signing_keys(parse_dkim_keys(setting))
            signer = Signer(keys)
            whole = cpu_per_call(partial(signer.sign, data), args.count, args.repeat, deadline)
            # About as many bytes as the signed header fields: what the key really signs.
            alone = cpu_per_call(
                partial(key_operation(keys[0]), data[:600]), args.count, args.repeat, deadline
            )
            print(row.format(f"Signer.sign, {keys[0].algorithm}", whole * 1e6))
            print(row.format(f"  of which the key operation ({algorithm})", alone * 1e6))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
