"""A real DNS server for tests: dnsmasq on 127.0.0.1, answering from a `Zone` given as options.

`DnsServer(zone, workdir)` runs `dnsmasq` in the foreground on a free UDP+TCP port of
127.0.0.1, with no configuration file, no upstream servers and no /etc/hosts. Every unknown name
under `.test` gets NXDOMAIN (`--local=/test/`). A missing dnsmasq binary is a failure, never a
skip: `scripts/` installs it (Debian's `dnsmasq-base`). Running as root, dnsmasq drops to
`nobody` after opening its pid and log files, which is all it needs.

The standard zone (`STANDARD_ZONE`, served by the session fixture `dns_server`, TTL 300):

    mx.test           MX 10 mx1.mx.test, MX 10 mx2.mx.test (equal), MX 20 backup.mx.test
      mx1.mx.test     A 127.0.0.2        mx2.mx.test  A 127.0.0.3     backup.mx.test  A 127.0.0.4
    multi.test        MX 10 dual.multi.test
      dual.multi.test A 127.0.0.6, A 127.0.0.7, AAAA ::1   (every address of a host)
    implicit.test     no MX; A 127.0.0.5                   (implicit MX, RFC 5321 §5.1)
    nullmx.test       MX 0 .                               (null MX, RFC 7505)
    partial.test      MX 10 ghost.partial.test (NXDOMAIN), MX 20 real.partial.test A 127.0.0.8
    noaddr.test       MX 10 ghost.noaddr.test (NXDOMAIN)   (no MX host has an address)
    tempfail.test     MX 10 mx.servfail.test               (its address look-ups SERVFAIL)
    xn--bcher-kva.test (bücher.test)  MX 10 mx.xn--bcher-kva.test  A 127.0.0.9
    servfail.test     SERVFAIL for it and every name under it
    missing.test      NXDOMAIN, like every other name under .test

TXT records (`Txt`, made with `txt(name, *strings)`) are served as raw rdata, so a test controls
every string and byte; the standard zone has none.

SERVFAIL is real: dnsmasq forwards the `servfail` domains to a small upstream on loopback that
answers SERVFAIL to everything, and passes that rcode on (forwarding to a port where nothing
listens makes dnsmasq stay silent, not SERVFAIL). `Blackhole` is a UDP socket that never answers,
for timeouts. Build other zones from `STANDARD_ZONE.plus(...)` or `Zone(...)` and start them with
the function-scoped `make_dns_server(zone)` fixture. dnsmasq logs every query, so a test can
check which look-ups were made (`log_mark()`, `queries_since(mark)`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.lifecycle import StartStop

LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 10.0
_LOG_TIMEOUT = 5.0
_NULL_MX_RDATA = "000000"  # preference 0 (two octets), exchange the root name (one zero octet)
_RR_MX = 15
_RR_TXT = 16
_MAX_TXT_STRING = 255  # octets in one character-string (RFC 1035 §3.3)


class DnsmasqMissingError(RuntimeError):
    """dnsmasq is not installed: run the project's setup script (it installs dnsmasq-base)."""


@dataclass(frozen=True, slots=True)
class Mx:
    """One MX record: `domain MX preference exchange`."""

    domain: str
    exchange: str
    preference: int


@dataclass(frozen=True, slots=True)
class Host:
    """A/AAAA records of one name; `ttl` overrides the zone's TTL for these records only."""

    name: str
    addresses: tuple[str, ...]
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class Txt:
    """One TXT record of one or more strings (bytes, for what a hostile server could send); a
    string longer than 255 octets is served as several, split every 255 octets, as publishers
    split long DKIM keys."""

    name: str
    strings: tuple[str | bytes, ...]

    def rdata(self) -> str:
        """The record's wire form (length-prefixed strings) as hex, for dnsmasq's --dns-rr."""
        wire = b""
        for string in self.strings:
            data = string.encode() if isinstance(string, str) else string
            chunks = [data[i : i + _MAX_TXT_STRING] for i in range(0, len(data), _MAX_TXT_STRING)]
            for chunk in chunks or [b""]:
                wire += bytes([len(chunk)]) + chunk
        return wire.hex()


def txt(name: str, *strings: str | bytes) -> Txt:
    """A TXT record at `name` with `strings`."""
    return Txt(name, strings)


@dataclass(frozen=True, slots=True)
class Zone:
    """What the DNS server answers; names are A-labels, without a trailing dot."""

    mx: tuple[Mx, ...] = ()
    hosts: tuple[Host, ...] = ()
    null_mx: tuple[str, ...] = ()  # domains publishing `MX 0 .` (RFC 7505)
    servfail: tuple[str, ...] = ()  # domains answered SERVFAIL, subdomains included
    ttl: int = 300  # TTL of every record that has no TTL of its own
    txt: tuple[Txt, ...] = ()

    def plus(
        self,
        *,
        mx: tuple[Mx, ...] = (),
        hosts: tuple[Host, ...] = (),
        null_mx: tuple[str, ...] = (),
        servfail: tuple[str, ...] = (),
        ttl: int | None = None,
        txt: tuple[Txt, ...] = (),
    ) -> Zone:
        """This zone with more records (and another TTL when `ttl` is given)."""
        return Zone(
            mx=self.mx + mx,
            hosts=self.hosts + hosts,
            null_mx=self.null_mx + null_mx,
            servfail=self.servfail + servfail,
            ttl=self.ttl if ttl is None else ttl,
            txt=self.txt + txt,
        )


STANDARD_ZONE = Zone(
    mx=(
        Mx("mx.test", "mx1.mx.test", 10),
        Mx("mx.test", "mx2.mx.test", 10),
        Mx("mx.test", "backup.mx.test", 20),
        Mx("multi.test", "dual.multi.test", 10),
        Mx("partial.test", "ghost.partial.test", 10),
        Mx("partial.test", "real.partial.test", 20),
        Mx("noaddr.test", "ghost.noaddr.test", 10),
        Mx("tempfail.test", "mx.servfail.test", 10),
        Mx("xn--bcher-kva.test", "mx.xn--bcher-kva.test", 10),
    ),
    hosts=(
        Host("mx1.mx.test", ("127.0.0.2",)),
        Host("mx2.mx.test", ("127.0.0.3",)),
        Host("backup.mx.test", ("127.0.0.4",)),
        Host("dual.multi.test", ("127.0.0.6", "127.0.0.7", "::1")),
        Host("implicit.test", ("127.0.0.5",)),
        Host("real.partial.test", ("127.0.0.8",)),
        Host("mx.xn--bcher-kva.test", ("127.0.0.9",)),
    ),
    null_mx=("nullmx.test",),
    servfail=("servfail.test",),
)


@dataclass(frozen=True, slots=True)
class Query:
    """One query dnsmasq received, as its log tells it."""

    rdtype: str
    name: str


def find_dnsmasq() -> str:
    """The dnsmasq executable; raises `DnsmasqMissingError` when it is not installed."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("dnsmasq", path=search)
    if found is None:
        raise DnsmasqMissingError(
            "dnsmasq not found (looked in PATH, /usr/sbin, /sbin): install Debian's dnsmasq-base"
        )
    return found


def _free_port() -> int:
    """A loopback port free for both UDP and TCP right now (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


class Blackhole:
    """A UDP socket on loopback that receives queries and never answers them."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((LOOPBACK, 0))
        self.address: tuple[str, int] = (LOOPBACK, self._socket.getsockname()[1])

    def close(self) -> None:
        """Close the socket."""
        self._socket.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _ServfailUpstream:
    """The upstream dnsmasq forwards `servfail` domains to: it answers SERVFAIL to every query."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((LOOPBACK, 0))
        self._socket.settimeout(0.1)
        self.port: int = self._socket.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-servfail", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                wire, peer = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            try:
                query = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                continue
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            self._socket.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._socket.close()


class DnsServer(StartStop):
    """dnsmasq serving one `Zone` on 127.0.0.1; `start()` returns once it answers."""

    def __init__(self, zone: Zone, workdir: Path) -> None:
        self.zone = zone
        self.workdir = workdir
        self.ip = LOOPBACK
        self.port = 0
        self._log = workdir / "dnsmasq.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._upstream: _ServfailUpstream | None = None
        self._sentinels = itertools.count()

    @property
    def address(self) -> tuple[str, int]:
        """(ip, port) to give a resolver as its nameserver."""
        return (self.ip, self.port)

    def _arguments(self, port: int, upstream_port: int) -> list[str]:
        zone = self.zone
        arguments = [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={LOOPBACK}",
            f"--port={port}",
            "--local=/test/",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            f"--dhcp-leasefile={self.workdir / 'dnsmasq.leases'}",
            "--log-queries",
            f"--log-facility={self._log}",
            # The default (0) would make every local answer uncacheable, MX records included.
            f"--local-ttl={zone.ttl}",
        ]
        arguments += [f"--mx-host={m.domain},{m.exchange},{m.preference}" for m in zone.mx]
        for host in zone.hosts:
            ttl = "" if host.ttl is None else f",{host.ttl}"
            # One record per address: --host-record takes at most one IPv4 and one IPv6.
            arguments += [f"--host-record={host.name},{address}{ttl}" for address in host.addresses]
        # --mx-host cannot say "MX 0 .", so the record is given as raw rdata (RFC 7505 §3).
        arguments += [f"--dns-rr={name},{_RR_MX},{_NULL_MX_RDATA}" for name in zone.null_mx]
        # --txt-record splits strings at commas and cannot carry arbitrary bytes: raw rdata can.
        arguments += [f"--dns-rr={record.name},{_RR_TXT},{record.rdata()}" for record in zone.txt]
        arguments += [f"--server=/{name}/{LOOPBACK}#{upstream_port}" for name in zone.servfail]
        return arguments

    def start(self) -> None:
        """Start dnsmasq (retrying when the free port was taken meanwhile) and wait for answers."""
        executable = find_dnsmasq()
        self._upstream = _ServfailUpstream()
        failure = ""
        for attempt in range(3):
            port = _free_port()
            stderr_path = self.workdir / f"dnsmasq.stderr.{attempt}"
            with stderr_path.open("wb") as stderr:
                process = subprocess.Popen(
                    [executable, *self._arguments(port, self._upstream.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                )
            if self._wait_ready(process, port):
                self._process, self.port = process, port
                return
            if process.poll() is None:
                process.kill()
            process.wait()
            failure = stderr_path.read_text(errors="replace").strip()
        self._upstream.close()
        self._upstream = None
        raise RuntimeError(f"dnsmasq did not start: {failure or 'no answer'}")

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        probe = dns.message.make_query("ready.test.", "A")
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                dns.query.udp(probe, LOOPBACK, port=port, timeout=0.2)
            except (dns.exception.DNSException, OSError):
                time.sleep(0.02)
                continue
            return True
        return False

    def stop(self) -> None:
        """Stop dnsmasq by its PID and the SERVFAIL upstream; safe to call twice."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def log_mark(self) -> int:
        """A position in the query log; pass it to `queries_since`."""
        return self._log.stat().st_size

    def queries_since(self, mark: int) -> list[Query]:
        """Every query received after `mark`, in order.

        A sentinel query is sent first and awaited in the log, so every query answered before
        this call is in the result (dnsmasq writes its log in the order it handles queries).
        """
        sentinel = f"sync-{next(self._sentinels)}.test"
        dns.query.udp(dns.message.make_query(sentinel, "A"), self.ip, port=self.port, timeout=2)
        deadline = time.monotonic() + _LOG_TIMEOUT
        while True:
            with self._log.open("rb") as log:
                log.seek(mark)
                text = log.read().decode(errors="replace")
            queries = [_parse(line) for line in text.splitlines() if "]: query[" in line]
            found = [query for query in queries if query is not None]
            if any(query.name == sentinel for query in found):
                return [query for query in found if not query.name.startswith("sync-")]
            if time.monotonic() > deadline:
                raise AssertionError(f"dnsmasq never logged the sentinel query {sentinel}")
            time.sleep(0.01)


def _parse(line: str) -> Query | None:
    # "Nov 24 07:59:42 dnsmasq[7912]: query[AAAA] mx.test from 127.0.0.1"
    _, _, rest = line.partition("]: query[")
    rdtype, _, rest = rest.partition("] ")
    name = rest.split(" ", 1)[0]
    return Query(rdtype, name) if rdtype and name else None


@dataclass
class _Factory:
    workdir: Path
    started: list[DnsServer] = field(default_factory=list)

    def __call__(self, zone: Zone) -> DnsServer:
        server = DnsServer(zone, self.workdir / f"dns{len(self.started)}")
        server.workdir.mkdir()
        self.started.append(server)
        server.start()
        return server


@pytest.fixture(scope="session")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """dnsmasq serving `STANDARD_ZONE`, shared by the whole session."""
    with DnsServer(STANDARD_ZONE, tmp_path_factory.mktemp("dns")) as server:
        yield server


@pytest.fixture
def make_dns_server(tmp_path: Path) -> Iterator[Callable[[Zone], DnsServer]]:
    """Start a dnsmasq of the test's own for a zone; every one is stopped after the test."""
    factory = _Factory(tmp_path)
    try:
        yield factory
    finally:
        for server in factory.started:
            server.stop()


@pytest.fixture(scope="session")
def dns_blackhole() -> Iterator[tuple[str, int]]:
    """(ip, port) of a UDP nameserver on loopback that never answers."""
    with Blackhole() as blackhole:
        yield blackhole.address
