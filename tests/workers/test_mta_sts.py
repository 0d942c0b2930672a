"""MTA-STS (RFC 8461) for direct MX delivery, against real servers: the policy served over HTTPS
(trustme certificate) on 127.0.0.61:443 for the dnsmasq-served domain sts.test, aiosmtpd MX
sinks with and without STARTTLS, and the tests' Redis holding the cluster's policy cache."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator

import pytest
import redis

from settings import Settings
from tests.support.dns_server import STANDARD_ZONE, DnsServer, Host, Mx, Zone, txt
from tests.support.policy_server import POLICY_ADDRESS, PolicyServer
from tests.support.smtp_sink import MakeSink, Sink
from tests.support.tls_material import TlsMaterial
from tests.workers.test_delivery import FAST
from tests.workers.test_smtp_session import message
from workers.delivery.agent import DeliveryAgent
from workers.delivery.config import AgentConfig
from workers.delivery.mta_sts import FAILED_PREFIX, KEY_PREFIX, MtaStsPolicies, PolicyStore
from workers.delivery.mta_sts_fetch import Fetched, FetchFailed, PolicyFetcher
from workers.delivery.mta_sts_policy import Mode
from workers.delivery.mx import MxResolver
from workers.delivery.setup import agent_config
from workers.model.outcome import Deferred, Delivered
from workers.model.report import DeliveryReport
from workers.observe.metrics import MetricsRecorder, read_metrics
from workers.smtp.tls_policy import relay_policy, verified_context

DOMAIN = "sts.test"
MX_HOST = "mail.sts.test"
MX_ADDRESS = "127.0.0.62"
POLICY_HOST = f"mta-sts.{DOMAIN}"
KEY = KEY_PREFIX + DOMAIN
RECIPIENT = f"a@{DOMAIN}"


def zone(policy_id: str | None = "one") -> Zone:
    """sts.test: one MX host, the policy host on 127.0.0.61, and (unless None) its TXT id."""
    records = () if policy_id is None else (txt(f"_mta-sts.{DOMAIN}", f"v=STSv1; id={policy_id};"),)
    return STANDARD_ZONE.plus(
        mx=(Mx(DOMAIN, MX_HOST, 10),),
        hosts=(Host(MX_HOST, (MX_ADDRESS,)), Host(POLICY_HOST, (POLICY_ADDRESS,))),
        txt=records,
    )


def policy(mode: str = "enforce", mx: str = MX_HOST, max_age: int = 86400) -> str:
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: {max_age}\r\n"


@pytest.fixture
def sts_dns(make_dns_server: Callable[[Zone], DnsServer]) -> DnsServer:
    return make_dns_server(zone())


@pytest.fixture
def policy_server(tls: TlsMaterial) -> Iterator[PolicyServer]:
    with PolicyServer(tls.server_context(POLICY_HOST)) as server:
        yield server


def policies(
    dns: DnsServer, tls: TlsMaterial, client: redis.Redis, port: int = 25, *denied: str
) -> MtaStsPolicies:
    """What a worker process builds (`workers.delivery.setup.mta_sts_policies`)."""
    networks = tuple(ipaddress.ip_network(network) for network in denied)
    resolver = MxResolver([dns.address], port=port, timeout=2, deny_networks=networks)
    ca_file = str(tls.ca_file)
    return MtaStsPolicies(
        resolver,
        PolicyFetcher(resolver, verified_context(ca_file), 5),
        PolicyStore(client),
        relay_policy("starttls", ca_file),
    )


def agent(sts: MtaStsPolicies, dns: DnsServer, port: int) -> DeliveryAgent:
    resolver = MxResolver([dns.address], port=port, timeout=2)
    config = AgentConfig(
        resolver=resolver,
        mx_port=port,
        relay=None,
        helo="client.mailroom.test",
        timeouts=FAST,
        mta_sts=sts,
    )
    return DeliveryAgent(config)


def mx_sink(make_sink: MakeSink, tls: TlsMaterial, port: int, *, starttls: bool = True) -> Sink:
    context = tls.server_context(MX_HOST) if starttls else None
    return make_sink(MX_ADDRESS, port=port, starttls_context=context)


async def deliver(sts: MtaStsPolicies, dns: DnsServer, port: int) -> DeliveryReport:
    return await agent(sts, dns, port).deliver(message(), DOMAIN, [RECIPIENT])


def nothing_sent(sink: Sink) -> bool:
    return all(record.mail_from == [] for record in sink.sessions) and sink.received == []


async def test_enforce_with_a_matching_mx_and_valid_tls_delivers(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(policy())
    sink = mx_sink(make_sink, tls, mx_port)

    report = await deliver(policies(sts_dns, tls, redis_client), sts_dns, mx_port)

    assert isinstance(report.outcomes[0], Delivered)
    assert report.mta_sts_failure is None
    [received] = sink.messages
    assert received.tls
    [request] = policy_server.requests
    assert (request.path, request.host) == ("/.well-known/mta-sts.txt", POLICY_HOST)


async def test_enforce_defers_when_no_mx_matches_and_sends_nothing(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(policy(mx="*.elsewhere.test"))
    sink = mx_sink(make_sink, tls, mx_port)

    report = await deliver(policies(sts_dns, tls, redis_client), sts_dns, mx_port)

    [outcome] = report.outcomes
    assert isinstance(outcome, Deferred)
    assert outcome.reply.code == 451
    assert outcome.reply.enhanced == "4.7.0"
    assert f"MTA-STS policy of {DOMAIN} (enforce)" in outcome.reply.text
    assert MX_HOST in outcome.reply.text
    assert report.mta_sts_failure == "enforce"
    assert report.attempts == ()
    assert sink.sessions == []


async def test_enforce_defers_when_the_mx_offers_no_starttls(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(policy())
    sink = mx_sink(make_sink, tls, mx_port, starttls=False)

    report = await deliver(policies(sts_dns, tls, redis_client), sts_dns, mx_port)

    [outcome] = report.outcomes
    assert isinstance(outcome, Deferred)
    assert outcome.reply.enhanced == "4.7.4"
    assert outcome.reply.text.startswith(f"MTA-STS policy of {DOMAIN} (enforce): ")
    assert report.mta_sts_failure == "enforce"
    assert sink.sessions  # it was dialled, and told nothing after EHLO
    assert nothing_sent(sink)


async def test_enforce_defers_when_the_mx_certificate_is_not_for_its_name(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(policy())
    sink = make_sink(MX_ADDRESS, port=mx_port, starttls_context=tls.wrong_name_context())

    report = await deliver(policies(sts_dns, tls, redis_client), sts_dns, mx_port)

    [outcome] = report.outcomes
    assert isinstance(outcome, Deferred)
    assert outcome.reply.enhanced == "4.7.5"
    assert f"MTA-STS policy of {DOMAIN} (enforce)" in outcome.reply.text
    assert "certificate" in outcome.reply.text
    assert len(report.attempts) == 1  # no plaintext retry
    assert nothing_sent(sink)


async def test_testing_mode_delivers_and_counts_the_failure(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(policy("testing", mx="*.elsewhere.test"))
    sink = mx_sink(make_sink, tls, mx_port, starttls=False)

    report = await deliver(policies(sts_dns, tls, redis_client), sts_dns, mx_port)
    recorder = MetricsRecorder(redis_client)
    recorder.delivery(report, {})
    recorder.flush()

    assert isinstance(report.outcomes[0], Delivered)
    assert len(sink.messages) == 1
    assert report.mta_sts_failure == "testing"
    assert read_metrics(redis_client).mta_sts_failures == {"testing": 1}


async def test_testing_mode_without_tls_counts_too(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(policy("testing"))
    sink = mx_sink(make_sink, tls, mx_port, starttls=False)

    report = await deliver(policies(sts_dns, tls, redis_client), sts_dns, mx_port)

    assert isinstance(report.outcomes[0], Delivered)
    assert len(sink.messages) == 1
    assert report.mta_sts_failure == "testing"


async def test_testing_mode_with_a_bad_certificate_delivers_over_unverified_tls_and_counts(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(policy("testing"))
    sink = make_sink(MX_ADDRESS, port=mx_port, starttls_context=tls.wrong_name_context())

    report = await deliver(policies(sts_dns, tls, redis_client), sts_dns, mx_port)

    assert isinstance(report.outcomes[0], Delivered)
    assert report.mta_sts_failure == "testing"
    first, second = report.attempts  # verified: refused; then as without a policy
    assert first.steps[-1].reply.enhanced == "4.7.5"
    assert "MTA-STS" not in first.steps[-1].reply.text  # testing defers nothing
    assert [s.command for s in second.steps][:3] == ["connect", "EHLO", "STARTTLS"]
    [received] = sink.messages
    assert received.tls


async def test_testing_mode_met_counts_nothing(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(policy("testing"))
    sink = mx_sink(make_sink, tls, mx_port)

    report = await deliver(policies(sts_dns, tls, redis_client), sts_dns, mx_port)

    assert isinstance(report.outcomes[0], Delivered)
    assert report.mta_sts_failure is None
    assert len(report.attempts) == 1
    assert sink.messages[0].tls


async def test_policy_is_cached_in_redis_for_the_cluster_until_max_age(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
) -> None:
    policy_server.serve(policy(max_age=1000))

    first = await policies(sts_dns, tls, redis_client).policy(DOMAIN)
    # Another worker process: its own in-process cache, the same Redis.
    second = await policies(sts_dns, tls, redis_client).policy(DOMAIN)

    assert first.policy is not None
    assert first.policy.mode is Mode.ENFORCE
    assert second == first
    assert len(policy_server.requests) == 1
    assert 990 <= redis_client.ttl(KEY) <= 1000
    stored = redis_client.get(KEY)
    assert stored is not None
    assert b'"id": "one"' in stored


async def test_the_process_asks_neither_dns_nor_redis_again_for_each_message(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
) -> None:
    policy_server.serve(policy())
    sts = policies(sts_dns, tls, redis_client)
    first = await sts.policy(DOMAIN)
    redis_client.delete(KEY)  # were Redis asked again, the policy would be fetched again
    mark = sts_dns.log_mark()

    again = [await sts.policy(DOMAIN) for _ in range(3)]

    assert again == [first] * 3
    assert sts_dns.queries_since(mark) == []
    assert len(policy_server.requests) == 1


async def test_a_new_txt_id_fetches_the_policy_again(
    make_dns_server: Callable[[Zone], DnsServer],
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
) -> None:
    before = make_dns_server(zone("one"))
    policy_server.serve(policy("testing", max_age=1000))
    assert (await policies(before, tls, redis_client).policy(DOMAIN)).policy is not None

    after = make_dns_server(zone("two"))
    policy_server.serve(policy("enforce", max_age=2000))
    known = await policies(after, tls, redis_client).policy(DOMAIN)

    assert known.policy is not None
    assert known.policy.mode is Mode.ENFORCE
    assert len(policy_server.requests) == 2
    stored = redis_client.get(KEY)
    assert stored is not None
    assert b'"id": "two"' in stored
    assert redis_client.ttl(KEY) > 1000


async def test_without_the_txt_record_a_cached_policy_stays_in_force(
    make_dns_server: Callable[[Zone], DnsServer],
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(policy(mx="*.elsewhere.test"))
    with_record = make_dns_server(zone("one"))
    await policies(with_record, tls, redis_client).policy(DOMAIN)

    without = make_dns_server(zone(None))
    sink = mx_sink(make_sink, tls, mx_port)
    report = await deliver(policies(without, tls, redis_client), without, mx_port)

    assert isinstance(report.outcomes[0], Deferred)
    assert "MTA-STS" in report.outcomes[0].reply.text
    assert sink.sessions == []
    assert len(policy_server.requests) == 1


async def test_a_redirect_is_not_followed_and_means_no_policy(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
) -> None:
    policy_server.serve(
        "", status=301, headers=(("Location", f"https://{POLICY_HOST}/elsewhere.txt"),)
    )
    sink = mx_sink(make_sink, tls, mx_port, starttls=False)
    sts = policies(sts_dns, tls, redis_client)

    known = await sts.policy(DOMAIN)
    report = await deliver(sts, sts_dns, mx_port)  # the same process: the failure is remembered

    assert known.policy is None
    assert "HTTP 301" in known.reason
    assert [r.path for r in policy_server.requests] == ["/.well-known/mta-sts.txt"]
    # No policy: delivered as without MTA-STS (opportunistic TLS, here none).
    assert isinstance(report.outcomes[0], Delivered)
    assert len(sink.messages) == 1
    assert redis_client.exists(KEY) == 0


async def test_a_failed_fetch_is_not_repeated_by_other_workers_until_the_id_changes(
    make_dns_server: Callable[[Zone], DnsServer],
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
) -> None:
    policy_server.serve("", status=302, headers=(("Location", "https://elsewhere.test/"),))
    first_dns = make_dns_server(zone("one"))

    first = await policies(first_dns, tls, redis_client).policy(DOMAIN)
    # Another worker process, same TXT id: it takes the cluster's word for the failure.
    second = await policies(first_dns, tls, redis_client).policy(DOMAIN)

    assert first.policy is None
    assert second == first
    assert len(policy_server.requests) == 1
    assert 0 < redis_client.ttl(FAILED_PREFIX + DOMAIN) <= 300

    # The domain publishes a new id (a fixed policy): fetched again at once.
    policy_server.serve(policy())
    fixed = make_dns_server(zone("two"))
    third = await policies(fixed, tls, redis_client).policy(DOMAIN)

    assert third.policy is not None
    assert len(policy_server.requests) == 2
    assert redis_client.exists(FAILED_PREFIX + DOMAIN) == 0


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"body": policy() + "x: " + "y" * 70_000 + "\r\n"}, "over 65536 bytes"),
        ({"body": policy(), "content_type": "text/html"}, "Content-Type text/html"),
        ({"body": policy(), "status": 404}, "HTTP 404"),
        ({"body": "version: STSv1\r\nmode: enforce\r\n"}, "max_age"),
    ],
)
async def test_unusable_answers_are_no_policy(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    answer: dict[str, object],
    reason: str,
) -> None:
    policy_server.serve(**answer)  # type: ignore[arg-type]
    resolver = MxResolver([sts_dns.address], port=25, timeout=2)

    fetched = await PolicyFetcher(resolver, verified_context(str(tls.ca_file)), 5).fetch(DOMAIN)

    assert isinstance(fetched, FetchFailed)
    assert reason in fetched.reason


async def test_a_policy_host_with_an_untrusted_certificate_is_no_policy(
    sts_dns: DnsServer, policy_server: PolicyServer, tls: TlsMaterial
) -> None:
    policy_server.serve(policy())
    resolver = MxResolver([sts_dns.address], port=25, timeout=2)

    # Without the test CA, the policy host's certificate is not trusted.
    fetched = await PolicyFetcher(resolver, verified_context(None), 5).fetch(DOMAIN)

    assert isinstance(fetched, FetchFailed)
    assert "certificate" in fetched.reason
    assert policy_server.requests == []


async def test_a_policy_host_in_a_denied_network_is_never_dialled(
    sts_dns: DnsServer, policy_server: PolicyServer, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    policy_server.serve(policy())

    known = await policies(sts_dns, tls, redis_client, 25, f"{POLICY_ADDRESS}/32").policy(DOMAIN)

    assert known.policy is None
    assert "MX_DENY_NETWORKS" in known.reason
    assert policy_server.requests == []


async def test_a_good_policy_fetches(
    sts_dns: DnsServer, policy_server: PolicyServer, tls: TlsMaterial
) -> None:
    policy_server.serve(policy(), content_type="text/plain; charset=utf-8")
    resolver = MxResolver([sts_dns.address], port=25, timeout=2)

    fetched = await PolicyFetcher(resolver, verified_context(str(tls.ca_file)), 5).fetch(DOMAIN)

    assert isinstance(fetched, Fetched)
    assert fetched.policy.mx == (MX_HOST,)


def settings_for(dns: DnsServer, tls: TlsMaterial, port: int, mta_sts: str) -> Settings:
    return Settings(
        dns_nameservers=f"{dns.ip}:{dns.port}",
        mx_port=port,
        tls_ca_file=str(tls.ca_file),
        helo_name="client.mailroom.test",
        connect_timeout=5,
        mta_sts=mta_sts,
    )


@pytest.mark.parametrize("setting", ["on", "off"])
async def test_the_setting_decides_whether_policies_are_looked_up(
    sts_dns: DnsServer,
    policy_server: PolicyServer,
    tls: TlsMaterial,
    redis_client: redis.Redis,
    make_sink: MakeSink,
    mx_port: int,
    setting: str,
) -> None:
    policy_server.serve(policy(mx="*.elsewhere.test"))
    sink = mx_sink(make_sink, tls, mx_port)
    config = agent_config(settings_for(sts_dns, tls, mx_port, setting), redis_client)
    mark = sts_dns.log_mark()

    report = await DeliveryAgent(config).deliver(message(), DOMAIN, [RECIPIENT])

    looked_up = [(q.rdtype, q.name) for q in sts_dns.queries_since(mark)]
    if setting == "off":
        assert isinstance(report.outcomes[0], Delivered)
        assert len(sink.messages) == 1
        assert not any("mta-sts" in name for _, name in looked_up)
        assert policy_server.requests == []
    else:
        assert isinstance(report.outcomes[0], Deferred)
        assert sink.sessions == []
        assert ("TXT", f"_mta-sts.{DOMAIN}") in looked_up
        assert len(policy_server.requests) == 1


async def test_a_unicode_domain_is_looked_up_by_its_a_labels(
    sts_dns: DnsServer, tls: TlsMaterial, redis_client: redis.Redis
) -> None:
    mark = sts_dns.log_mark()

    known = await policies(sts_dns, tls, redis_client).policy("Bücher.test")

    assert known.policy is None
    assert known.reason == "no _mta-sts.xn--bcher-kva.test record"
    assert ("TXT", "_mta-sts.xn--bcher-kva.test") in [
        (q.rdtype, q.name) for q in sts_dns.queries_since(mark)
    ]
