"""Fetch a domain's MTA-STS policy file: `https://mta-sts.<domain>/.well-known/mta-sts.txt`.

RFC 8461 §3.3: HTTPS with a certificate valid for `mta-sts.<domain>` (the public CAs, certifi,
plus TLS_CA_FILE), no redirects (a 3xx is a failure: httpcore never follows one), Content-Type
text/plain, and a bounded size (64 KB) and time. The host's address comes from the workers' own
resolver (DNS_NAMESERVERS), never the system's, and an address in MX_DENY_NETWORKS is never
dialled: httpcore is given a network backend that resolves through `MxResolver` and dials the
address it allows, while TLS still checks the host *name*. httpcore's exceptions become a
`FetchFailed` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
from httpcore import AnyIOBackend, AsyncNetworkBackend, AsyncNetworkStream

from workers.delivery.mta_sts_policy import MAX_POLICY_BYTES, Malformed, Policy, parse_policy
from workers.delivery.mx import MxResolver
from workers.model.reply import Reply, printable

WELL_KNOWN = "/.well-known/mta-sts.txt"


@dataclass(frozen=True, slots=True)
class Fetched:
    """A policy file that parsed, and its text (what the cluster's cache keeps)."""

    policy: Policy
    text: str


@dataclass(frozen=True, slots=True)
class FetchFailed:
    """No usable policy came back, and why (text made here; a peer's bytes escaped)."""

    reason: str


class _Refused(OSError):
    """The policy host has no address this worker may dial; the reason is the resolver's."""


class ResolvingBackend(AsyncNetworkBackend):
    """httpcore's network backend, dialling the addresses `resolver` gives (denied networks
    left out) in turn instead of asking the system resolver."""

    def __init__(self, resolver: MxResolver) -> None:
        self._resolver = resolver
        self._dial = AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncNetworkStream:
        found = await self._resolver.host_addresses(host)
        if isinstance(found, Reply):
            raise _Refused(found.text)
        failure: Exception | None = None
        for address in found:
            try:
                return await self._dial.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # host_addresses never returns an empty tuple
        raise failure

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class PolicyFetcher:
    """Fetches policy files, each within `timeout` seconds overall."""

    def __init__(self, resolver: MxResolver, context: ssl.SSLContext, timeout: float) -> None:
        self._backend = ResolvingBackend(resolver)
        self._context = context
        self._timeout = timeout

    async def fetch(self, domain: str) -> Fetched | FetchFailed:
        """The policy of `domain` (an A-label name), or why there is none."""
        host = f"mta-sts.{domain}"
        try:
            async with asyncio.timeout(self._timeout):
                return await self._get(host)
        except TimeoutError:
            return FetchFailed(f"https://{host}{WELL_KNOWN} took over {self._timeout:g} s")
        except _Refused as exc:
            return FetchFailed(f"{host}: {exc}")
        except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
            return FetchFailed(f"{host}: {_why(exc)}")
        except (httpcore.NetworkError, httpcore.TimeoutException) as exc:
            return FetchFailed(f"{host}: {_why(exc)}")
        except httpcore.ProtocolError as exc:
            return FetchFailed(f"{host}: not a valid HTTP response ({_why(exc)})")
        except OSError as exc:  # anything the network layer did not map to httpcore's own
            return FetchFailed(f"{host}: {_why(exc)}")

    async def _get(self, host: str) -> Fetched | FetchFailed:
        bound = {"connect": self._timeout, "read": self._timeout, "write": self._timeout}
        async with (
            httpcore.AsyncConnectionPool(
                ssl_context=self._context, network_backend=self._backend, retries=0
            ) as pool,
            pool.stream(
                "GET",
                f"https://{host}{WELL_KNOWN}",
                headers=[(b"Accept", b"text/plain"), (b"Connection", b"close")],
                extensions={"timeout": {**bound, "pool": self._timeout}},
            ) as response,
        ):
            if response.status != 200:
                return FetchFailed(f"{host} answered HTTP {response.status}, not 200")
            kind = _header(response.headers, b"content-type")
            if kind.split(";")[0].strip().lower() != "text/plain":
                shown = printable(kind, 80) or "none"
                return FetchFailed(f"{host} sent Content-Type {shown}, not text/plain")
            body = bytearray()
            async for chunk in response.aiter_stream():
                body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    return FetchFailed(f"{host} sent a policy over {MAX_POLICY_BYTES} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return FetchFailed(f"{host} sent a policy that is not UTF-8")
        parsed = parse_policy(text)
        if isinstance(parsed, Malformed):
            return FetchFailed(f"{host}: {parsed.reason}")
        return Fetched(parsed, text)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    value = next((v for k, v in headers if k.lower() == name), b"")
    return value.decode("latin-1")


def _why(exc: BaseException) -> str:
    """The reason behind an httpcore exception: a certificate's verdict if there is one."""
    seen: BaseException | None = exc
    for _ in range(8):  # chains are short; the bound guards against a cycle
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate not trusted: {seen.verify_message}"
        seen = seen.__cause__ or seen.__context__
    return printable(str(exc) or type(exc).__name__, 200)
