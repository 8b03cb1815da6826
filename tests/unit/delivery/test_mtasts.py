"""MTA-STS: strict parsing, the file cache, and discovery against a real DNS server and a
real HTTPS policy host on loopback (RFC 8461 3, 5)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from gateway.cluster.mtasts import DatabasePolicyStore
from gateway.delivery.mtasts import CachedPolicy, PolicyStore, StsPolicy
from gateway.delivery.mtasts.fetch import PolicyFetcher
from gateway.delivery.mtasts.files import FilePolicyStore
from gateway.delivery.mtasts.policy import PolicyError, parse_policy, record_id
from gateway.delivery.mtasts.service import MtaSts
from gateway.delivery.resolver import DnsResolver
from tests.support.dns import DnsServer
from tests.support.policyhost import PolicyHost, policy
from tests.support.sink import server_tls

HOST, BAD_HOST = "127.0.0.5", "127.0.0.6"
DOMAINS = ("sts.test", "testing.test", "none.test", "gone.test", "html.test", "big.test",
           "redirect.test", "invalid.test")


# --- the TXT record and the policy file -------------------------------------------------

@pytest.mark.parametrize(("texts", "expected"), [
    (["v=STSv1; id=20240101T000000"], "20240101T000000"),
    (["v=STSv1;id=1;"], "1"),
    (["v=STSv1; id=1; ext.a-b=x!y"], "1"),
    (["v=STSv1; id=1; id=2"], "1"),
    (["v=spf1 -all", "v=STSv1; id=abc"], "abc"),
    (["v=STSv1; id=1", "v=STSv1; id=2"], None),  # two records: none available
    (["v=STSv1"], None), (["v=STSv1;"], None), (["v=STSv1; id="], None),
    (["v=STSv1; id=a_b"], None), (["v=STSv1; id=" + "a" * 33], None),
    (["id=1; v=STSv1"], None), (["v=STSv1 id=1"], None), (["v=STSv1; id=1;; x=y"], None),
    ([], None),
])
def test_the_txt_record(texts, expected):
    assert record_id(texts) == expected


def test_a_policy_as_the_rfc_writes_it():
    text = ("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET\r\n"
            "mx: backupmx.example.com\r\nmax_age: 604800\r\n")
    assert parse_policy(text) == StsPolicy("enforce", 604800, (
        "mail.example.com", "*.example.net", "backupmx.example.com"))


def test_lf_endings_extensions_and_duplicates():
    text = "version: STSv1\nmode: testing\nmode: enforce\nx-note: hej med dig\nmx: a.test\n" \
           "max_age: 60"
    assert parse_policy(text) == StsPolicy("testing", 60, ("a.test",))
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n") == StsPolicy("none", 0)


@pytest.mark.parametrize(("text", "why"), [
    ("mode: enforce\nmx: a.test\nmax_age: 60\n", "'version' is missing"),
    ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 60\n", "not STSv1"),
    ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 60\n", "not enforce"),
    ("version: STSv1\nmode: enforce\nmx: a.test\n", "'max_age' is missing"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 60\n", "at least one mx"),
    ("version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 60\n", "not an MX pattern"),
    ("version: STSv1\nmode: enforce\nmx: *\nmax_age: 60\n", "not an MX pattern"),
    ("version: STSv1\n\nmode: enforce\nmx: a.test\nmax_age: 60\n", "line 2"),
    ("<html>version: STSv1</html>", "line 1"),
    ("Version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 60\n", "'version' is missing"),
])
def test_what_is_not_a_policy(text, why):
    with pytest.raises(PolicyError, match=why):
        parse_policy(text)


@pytest.mark.parametrize(("host", "matches"), [
    ("mail.example.com", True), ("MAIL.example.com.", True), ("mx1.example.net", True),
    ("example.net", False), ("a.b.example.net", False), ("other.example.com", False),
])
def test_mx_patterns(host, matches):
    assert StsPolicy("enforce", 60, ("mail.example.com", "*.example.net")).matches(host) \
        is matches


# --- the file store --------------------------------------------------------------------

async def test_the_store_keeps_a_policy_across_instances(tmp_path: Path):
    entry = CachedPolicy("sts.test", "7", StsPolicy("enforce", 60, ("*.sts.test",)), 1000.0)
    await FilePolicyStore(tmp_path / "mta-sts").save(entry)
    assert await FilePolicyStore(tmp_path / "mta-sts").load("sts.test") == entry
    assert await FilePolicyStore(tmp_path / "mta-sts").load("other.test") is None
    assert [p.name for p in (tmp_path / "mta-sts").iterdir()] == ["sts.test.json"]
    assert json.loads((tmp_path / "mta-sts" / "sts.test.json").read_text())["mode"] == "enforce"


async def test_an_unreadable_cache_file_is_ignored(tmp_path: Path):
    (tmp_path / "sts.test.json").write_text("{not json")
    (tmp_path / "v2.test.json").write_text(json.dumps({"version": 2}))
    store = FilePolicyStore(tmp_path)
    assert await store.load("sts.test") is None and await store.load("v2.test") is None


# --- discovery, fetching and caching ---------------------------------------------------

@pytest.fixture(scope="module")
def web_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def zone() -> dict:
    zone: dict = {}
    for i, domain in enumerate(DOMAINS):
        zone[f"_mta-sts.{domain}"] = {"TXT": [f"v=STSv1; id=1{i}"]}
        zone[f"mta-sts.{domain}"] = {"A": [HOST]}
    zone["_mta-sts.nothing.test"] = {"TXT": ["v=spf1 -all"]}
    zone["_mta-sts.servfail.test"] = "SERVFAIL"
    zone["_mta-sts.badcert.test"] = {"TXT": ["v=STSv1; id=1"]}
    zone["mta-sts.badcert.test"] = {"A": [BAD_HOST]}
    zone["_mta-sts.noaddress.test"] = {"TXT": ["v=STSv1; id=1"]}
    zone["_mta-sts.wrongname.test"] = {"TXT": ["v=STSv1; id=1"]}
    zone["mta-sts.wrongname.test"] = {"A": [HOST]}  # whose certificate does not name it
    return zone


@pytest.fixture
def dns(zone: dict) -> Iterator[DnsServer]:
    with DnsServer(zone) as server:
        yield server


@pytest.fixture
async def hosts(web_ca: trustme.CA) -> AsyncIterator[tuple[PolicyHost, PolicyHost]]:
    names = [f"mta-sts.{d}" for d in DOMAINS]
    async with PolicyHost(host=HOST, tls=server_tls(web_ca, *names)) as good, \
            PolicyHost(host=BAD_HOST, port=good.port,
                       tls=server_tls(trustme.CA(), "mta-sts.badcert.test")) as bad:
        good.policies.update({
            "sts.test": policy("enforce", "mx1.sts.test", "*.backup.test"),
            "testing.test": policy("testing", "mx.testing.test"),
            "none.test": policy("none"),
            "html.test": policy("enforce", "mx.html.test"),
            "big.test": policy("enforce", "mx.big.test") + "x-pad: " + "y" * 70000 + "\n",
            "invalid.test": "version: STSv1\nmode: enforce\n",
        })
        good.replies["html.test"] = (200, "text/html", policy("enforce", "mx.html.test"))
        good.replies["redirect.test"] = (301, "text/plain", "")
        good.headers["redirect.test"] = {"Location": "https://mta-sts.sts.test/"}
        bad.policies["badcert.test"] = policy("enforce", "mx.badcert.test")
        good.policies["wrongname.test"] = policy("enforce", "mx.wrongname.test")
        yield good, bad


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def service(dns: DnsServer, hosts: tuple[PolicyHost, PolicyHost], web_ca: trustme.CA,
            folder: Path, clock: Clock, timeout: float = 5,
            store: PolicyStore | None = None) -> MtaSts:
    ca = folder / "web-ca.pem"
    web_ca.cert_pem.write_to_path(str(ca))
    resolver = DnsResolver([dns.nameserver], timeout=5)
    fetcher = PolicyFetcher(resolver, ca_file=ca, port=hosts[0].port, timeout=timeout)
    return MtaSts(resolver, fetcher, store or FilePolicyStore(folder / "mta-sts"), clock=clock)


async def test_enforce_vouches_and_is_cached_on_disk(dns, hosts, web_ca, tmp_path, clock):
    sts = service(dns, hosts, web_ca, tmp_path, clock)
    answer = await sts.lookup("sts.test")
    assert answer.result == "secure" and answer.entry is not None
    assert answer.entry.policy.mx == ("mx1.sts.test", "*.backup.test")
    assert (await sts.lookup("STS.test.")).result == "secure"
    assert hosts[0].requests == ["sts.test"]  # fetched once
    assert (tmp_path / "mta-sts" / "sts.test.json").exists()


@pytest.mark.parametrize(("domain", "mode"), [("testing.test", "testing"),
                                              ("none.test", "none")])
async def test_testing_and_none_do_not_count(dns, hosts, web_ca, tmp_path, clock, domain, mode):
    answer = await service(dns, hosts, web_ca, tmp_path, clock).lookup(domain)
    assert answer.result == "insecure" and f"{mode} mode" in answer.reason


async def test_no_record_is_no_policy(dns, hosts, web_ca, tmp_path, clock):
    sts = service(dns, hosts, web_ca, tmp_path, clock)
    for domain in ("nothing.test", "nxdomain.test"):
        answer = await sts.lookup(domain)
        assert answer.result == "insecure" and "publishes no MTA-STS policy" in answer.reason
    assert hosts[0].requests == []


@pytest.mark.parametrize(("domain", "why"), [
    ("badcert.test", "certificate of https://mta-sts.badcert.test"),
    ("wrongname.test", "certificate of https://mta-sts.wrongname.test"),
    ("gone.test", "HTTP 404"),
    ("redirect.test", "HTTP 301"),
    ("html.test", "text/html, not text/plain"),
    ("big.test", "larger than 65536 bytes"),
    ("invalid.test", "not a valid policy: the field 'max_age' is missing"),
    ("noaddress.test", "cannot fetch"),
])
async def test_an_announced_policy_that_cannot_be_had_is_a_failure(
        dns, hosts, web_ca, tmp_path, clock, domain, why):
    answer = await service(dns, hosts, web_ca, tmp_path, clock).lookup(domain)
    assert answer.result == "failed" and why in answer.reason and "announces" in answer.reason
    assert "sts.test" not in hosts[0].requests  # the redirect was not followed


async def test_a_txt_lookup_failure_is_a_failure_unless_a_policy_is_cached(
        dns, hosts, web_ca, tmp_path, clock):
    sts = service(dns, hosts, web_ca, tmp_path, clock)
    assert (await sts.lookup("servfail.test")).result == "failed"
    assert (await sts.lookup("sts.test")).result == "secure"
    dns.zone["_mta-sts.sts.test"] = "SERVFAIL"
    fresh = service(dns, hosts, web_ca, tmp_path, clock)  # a restart: only the disk remembers
    assert (await fresh.lookup("sts.test")).result == "secure"


async def test_a_hidden_record_does_not_remove_a_cached_policy(dns, hosts, web_ca, tmp_path,
                                                              clock):
    assert (await service(dns, hosts, web_ca, tmp_path, clock).lookup("sts.test")).result \
        == "secure"
    del dns.zone["_mta-sts.sts.test"]
    sts = service(dns, hosts, web_ca, tmp_path, clock)
    assert (await sts.lookup("sts.test")).result == "secure"
    clock.now += 86401  # past max_age: gone
    assert (await sts.lookup("sts.test")).result == "insecure"
    assert hosts[0].requests == ["sts.test"]


async def test_a_changed_id_fetches_the_new_policy(dns, hosts, web_ca, tmp_path, clock):
    sts = service(dns, hosts, web_ca, tmp_path, clock)
    assert (await sts.lookup("sts.test")).result == "secure"
    hosts[0].policies["sts.test"] = policy("testing", "mx1.sts.test")
    assert (await sts.lookup("sts.test")).result == "secure"  # same id: the cache holds
    dns.zone["_mta-sts.sts.test"] = {"TXT": ["v=STSv1; id=2"]}
    again = service(dns, hosts, web_ca, tmp_path, clock)  # its resolver cache is empty
    answer = await again.lookup("sts.test")
    assert answer.result == "insecure" and answer.entry is not None and answer.entry.id == "2"
    assert hosts[0].requests == ["sts.test", "sts.test"]


async def test_an_expired_policy_is_fetched_again(dns, hosts, web_ca, tmp_path, clock):
    sts = service(dns, hosts, web_ca, tmp_path, clock)
    await sts.lookup("sts.test")
    clock.now += 86401
    assert (await sts.lookup("sts.test")).result == "secure"
    assert hosts[0].requests == ["sts.test", "sts.test"]


async def test_a_failed_refresh_keeps_the_cached_policy(dns, hosts, web_ca, tmp_path, clock,
                                                        caplog):
    caplog.set_level(logging.INFO)
    sts = service(dns, hosts, web_ca, tmp_path, clock)
    await sts.lookup("sts.test")
    dns.zone["_mta-sts.sts.test"] = {"TXT": ["v=STSv1; id=2"]}
    hosts[0].replies["sts.test"] = (500, "text/plain", "down")
    answer = await service(dns, hosts, web_ca, tmp_path, clock).lookup("sts.test")
    assert answer.result == "secure" and answer.entry is not None and answer.entry.id == "10"
    assert "keeping the cached policy of sts.test" in caplog.text


async def test_a_failed_fetch_waits_five_minutes_per_id(dns, hosts, web_ca, tmp_path, clock):
    sts = service(dns, hosts, web_ca, tmp_path, clock)
    for _ in range(3):
        assert (await sts.lookup("gone.test")).result == "failed"
    assert hosts[0].requests == ["gone.test"]
    clock.now += 301
    await sts.lookup("gone.test")
    assert hosts[0].requests == ["gone.test", "gone.test"]


@pytest.mark.serial
async def test_a_policy_host_that_never_answers_is_bounded_in_time(dns, web_ca, tmp_path,
                                                                   clock, zone):
    async with PolicyHost(host=HOST, tls=server_tls(web_ca, "mta-sts.sts.test"),
                          stall=True) as slow:
        sts = service(dns, (slow, slow), web_ca, tmp_path, clock, timeout=0.5)
        started = time.monotonic()
        answer = await sts.lookup("sts.test")
    assert answer.result == "failed" and "did not answer within 0.5 s" in answer.reason
    assert time.monotonic() - started < 3


async def test_an_unreadable_store_is_a_failure(dns, hosts, web_ca, tmp_path, clock):
    (tmp_path / "mta-sts" / "sts.test.json").mkdir(parents=True)  # cannot be read as a file
    answer = await service(dns, hosts, web_ca, tmp_path, clock).lookup("sts.test")
    assert answer.result == "failed" and "cache is unavailable" in answer.reason


async def test_several_nodes_share_one_fetch_through_the_cluster_database(
        dns, hosts, web_ca, tmp_path, clock, open_node):
    """`cluster.database`: the policy one node fetched serves the others, who never fetch."""
    nodes = []
    for name in ("node1", "node2", "node3"):
        (tmp_path / name).mkdir()
        nodes.append(service(dns, hosts, web_ca, tmp_path / name, clock,
                             store=DatabasePolicyStore(await open_node(name))))
    for sts in nodes:
        answer = await sts.lookup("sts.test")
        assert answer.result == "secure" and answer.entry is not None
        assert answer.entry.policy.mx == ("mx1.sts.test", "*.backup.test")
    assert hosts[0].requests == ["sts.test"]
