"""One-off measurement: how many requests to the token endpoint N messages (10,000) through an
XOAUTH2 relay cost across two `mailroom worker` processes (four processes each).

    PYTHONPATH=. .venv/bin/python scripts/bench_oauth.py [--n 10000] [--workers 2]

Every server is the tests' own, on loopback, started here and stopped at the end: redis-server,
the HTTPS token endpoint speaking Microsoft's client-credentials flow and the aiosmtpd relay that
accepts only the tokens it issued (tests/support/oauth_server.py, smtp_sink.py). Workers are
stopped by PID. Prints one line: messages, seconds, token requests (POSTs) and metadata GETs.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from settings import Settings
from tasks.api import Mailroom
from tests.support.oauth_relay import CLIENT_ID, CLIENT_SECRET, MAILBOX
from tests.support.oauth_server import TENANT, TokenEndpoint
from tests.support.redis_server import RedisServer
from tests.support.smtp_sink import Sink
from tests.support.tls_material import TlsMaterial

_CHUNK = 500
_WAIT = 900.0  # seconds the whole run may take


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        tls = TlsMaterial(directory)
        with (
            RedisServer(directory / "redis") as redis_server,
            TokenEndpoint(tls) as endpoint,
            Sink(
                "127.0.0.1",
                starttls_context=tls.server_context("localhost"),
                require_starttls=True,
                xoauth2=endpoint.check,
                pipelining=True,
            ) as relay,
        ):
            endpoint.add_client(CLIENT_ID, CLIENT_SECRET)
            values = {
                "redis_url": redis_server.url,
                "shards": "4",
                "delivery": "relay",
                "relay_host": "localhost",
                "relay_port": str(relay.port),
                "relay_profile": "office365",
                "relay_username": MAILBOX,
                "oauth_tenant": TENANT,
                "oauth_client_id": CLIENT_ID,
                "oauth_client_secret": CLIENT_SECRET,
                "oauth_authority": endpoint.authority,
                "tls_ca_file": str(tls.ca_file),
                "helo_name": "bench.mailroom.test",
                "rate_limits": '{"relay": "100000/s"}',
                "max_connections": '{"relay": 16}',
            }
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.getcwd()}
            env.update({f"MAILROOM_{k.upper()}": v for k, v in values.items()})
            settings = Settings(**values)
            workers = [_worker(env, directory / f"worker{n}.log") for n in range(args.workers)]
            try:
                started = time.monotonic()
                mailroom = Mailroom(settings)
                for first in range(0, args.n, _CHUNK):
                    count = min(_CHUNK, args.n - first)
                    mailroom.notify_many(
                        {
                            "sender": "app@example.test",
                            "to": [f"user{first + i}@one.example"],
                            "subject": "Token bench",
                            "text": "hello",
                        }
                        for i in range(count)
                    )
                delivered = _wait(relay, args.n, started)
                elapsed = time.monotonic() - started
            finally:
                for worker in workers:
                    _stop(worker)
            posts = endpoint.token_requests()
            gets = sum(1 for r in endpoint.requests if r.method == "GET")
            print(
                f"{delivered} of {args.n} messages through the relay in {elapsed:.1f} s by"
                f" {args.workers} workers: {posts} token request(s), {gets} metadata GET(s)"
            )
            return 0 if delivered == args.n else 1


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "tasks.cli", "worker", "--concurrency", "4"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(relay: Sink, n: int, started: float) -> int:
    delivered = 0
    while time.monotonic() - started < _WAIT:
        delivered = sum(len(m.rcpt_tos) for m in relay.messages)
        print(f"\r{delivered}/{n}", end="", file=sys.stderr, flush=True)
        if delivered >= n:
            break
        time.sleep(2)
    print(file=sys.stderr)
    return delivered


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
