"""The DNS resolver against a real DNS server: secure, insecure and failed, caching, TCP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import pytest

from gateway.delivery.resolver import DnsFailure, DnsResolver, InvalidName
from tests.support.dns import DnsServer

DIGEST = bytes(range(32))
ZONE = {
    "signed.test": {"MX": [(10, "mx.signed.test")]},
    "mx.signed.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
    "_25._tcp.mx.signed.test": {"TLSA": [(3, 1, 1, DIGEST)]},
    "_mta-sts.signed.test": {"TXT": ["v=STSv1; id=1"]},
    "plain.test": {"MX": [(10, "mx.plain.test")]},
    "mx.plain.test": {"A": ["127.0.0.3"]},
    "mixed.signed.test": {"A": ["127.0.0.4"], "AAAA": "SERVFAIL"},
    "servfail.test": "SERVFAIL",
    "refused.test": "REFUSED",
    "slow.test": "TIMEOUT",
    "big.signed.test": {"TXT": [f"v=spf1 record number {i} " + "x" * 60 for i in range(12)]},
}


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer(ZONE, signed={"signed.test"}, udp_limit=512) as dns:
        yield dns


@pytest.fixture
def resolver(server: DnsServer) -> DnsResolver:
    return DnsResolver([server.nameserver], timeout=5)  # generous: the machine may be busy


async def test_signed_answers_are_secure_and_unsigned_are_not(resolver: DnsResolver):
    signed = await resolver.lookup("signed.test", "MX")
    plain = await resolver.lookup("plain.test", "MX")
    assert signed.secure and not plain.secure
    assert [r.exchange.to_text() for r in signed.records] == ["mx.signed.test."]
    assert [r.exchange.to_text() for r in plain.records] == ["mx.plain.test."]


async def test_tlsa_and_txt_records(resolver: DnsResolver):
    tlsa = await resolver.lookup("_25._tcp.mx.signed.test", "TLSA")
    [record] = tlsa.records
    assert (record.usage, record.selector, record.mtype, record.cert) == (3, 1, 1, DIGEST)
    txt = await resolver.lookup("_mta-sts.signed.test", "TXT")
    assert [b"".join(r.strings) for r in txt.records] == [b"v=STSv1; id=1"]


async def test_denials_carry_their_security(resolver: DnsResolver):
    nodata = await resolver.lookup("_25._tcp.mx.plain.test", "TLSA")
    assert nodata.records == () and nodata.nxdomain and not nodata.secure
    signed_nx = await resolver.lookup("_25._tcp.nothing.signed.test", "TLSA")
    assert signed_nx.nxdomain and signed_nx.secure  # an authenticated denial
    empty = await resolver.lookup("mx.signed.test", "TLSA")
    assert empty.records == () and not empty.nxdomain and empty.secure


@pytest.mark.serial
@pytest.mark.parametrize("name", ["servfail.test", "refused.test", "slow.test"])
async def test_a_failure_is_neither_an_answer_nor_a_denial(server: DnsServer, name: str):
    resolver = DnsResolver([server.nameserver], timeout=1)
    started = time.monotonic()
    with pytest.raises(DnsFailure, match=name):
        await resolver.lookup(name, "MX")
    assert time.monotonic() - started < 3  # bounded by the timeout


async def test_answers_are_cached_for_their_ttl_and_failures_are_not(server: DnsServer):
    resolver = DnsResolver([server.nameserver], timeout=5)
    await resolver.lookup("plain.test", "MX")
    await resolver.lookup("nothing.plain.test", "MX")
    with pytest.raises(DnsFailure):
        await resolver.lookup("servfail.test", "MX")
    server.zone["plain.test"] = {"MX": [(10, "other.plain.test")]}
    again = await resolver.lookup("plain.test", "MX")
    await resolver.lookup("nothing.plain.test", "MX")
    with pytest.raises(DnsFailure):
        await resolver.lookup("servfail.test", "MX")
    assert [r.exchange.to_text() for r in again.records] == ["mx.plain.test."]
    assert server.queries.count(("plain.test", "MX")) == 1
    assert server.queries.count(("nothing.plain.test", "MX")) == 1
    assert server.queries.count(("servfail.test", "MX")) > 1


async def test_a_short_ttl_expires():
    with DnsServer(ZONE, ttl=1) as server:
        resolver = DnsResolver([server.nameserver], timeout=5)
        await resolver.lookup("plain.test", "MX")
        await asyncio.sleep(1.1)
        await resolver.lookup("plain.test", "MX")
    assert server.queries.count(("plain.test", "MX")) == 2


async def test_a_truncated_answer_is_asked_again_over_tcp(resolver: DnsResolver,
                                                          server: DnsServer):
    answer = await resolver.lookup("big.signed.test", "TXT")
    assert len(answer.records) == 12 and answer.secure
    assert server.tcp_queries == [("big.signed.test", "TXT")]


async def test_addresses_are_secure_only_when_both_families_are(resolver: DnsResolver):
    both = await resolver.addresses("mx.signed.test")
    assert both.addresses == ("127.0.0.2", "::1") and both.secure
    half = await resolver.addresses("mixed.signed.test")  # AAAA failed: usable, not vouched
    assert half.addresses == ("127.0.0.4",) and not half.secure
    plain = await resolver.addresses("mx.plain.test")
    assert plain.addresses == ("127.0.0.3",) and not plain.secure
    with pytest.raises(DnsFailure):
        await resolver.addresses("servfail.test")


async def test_an_invalid_name(resolver: DnsResolver):
    with pytest.raises(InvalidName):
        await resolver.lookup("a" * 64 + ".test", "MX")


def test_the_server_vouches_only_when_asked(server: DnsServer):
    """The test server plays a validating resolver: AD only for a DO or AD query."""
    plain = dns.message.make_query("signed.test", "MX", use_edns=False)
    plain.flags &= ~dns.flags.AD
    asked = dns.message.make_query("signed.test", "MX", want_dnssec=True)
    assert not dns.query.udp(plain, "127.0.0.1", port=server.port, timeout=2).flags & \
        dns.flags.AD
    assert dns.query.udp(asked, "127.0.0.1", port=server.port, timeout=2).flags & dns.flags.AD
