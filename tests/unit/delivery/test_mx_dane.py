"""The `dane` and `dane-only` levels: real SMTP servers on 127.0.0.2/3, a DNS server playing
a validating resolver (AD for the signed zone), TLSA records that match or do not."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.delivery import Rcpt, Result, Route, TlsPolicy
from gateway.delivery.mx import MxResolver, MxTransport
from gateway.delivery.resolver import DnsResolver
from gateway.delivery.smtp import SmtpTransport
from tests.support.dns import DnsServer
from tests.support.pki import CA, Issued
from tests.support.sink import SmtpSink

OK = 250
MX1, MX2 = "127.0.0.2", "127.0.0.3"
DANE_ONLY = TlsPolicy("dane-only")
DANE = TlsPolicy("dane")
MESSAGE = b"From: anna@brondby.test\r\nSubject: Hej\r\n\r\nFortroligt.\r\n"


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued | CA]:
    issuing = CA("DANE issuing CA", parent=CA("DANE root"))
    stranger = CA("a CA nobody trusts")
    return {
        "issuing": issuing,
        "mx1": issuing.issue(common_name="mx1.dane.test", dns_names=["mx1.dane.test"],
                             server=True),
        "mx2": issuing.issue(common_name="mx2.dane.test", dns_names=["mx2.dane.test"],
                             server=True),
        "self": stranger.issue(common_name="localhost", dns_names=["localhost"], server=True,
                               ec_key=True),  # a key of its own: the other TLSA never match
    }


def ee(issued: Any) -> tuple[int, int, int, bytes]:
    """DANE-EE SPKI SHA2-256, the record most servers publish (3 1 1)."""
    key = issued.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return (3, 1, 1, hashlib.sha256(key).digest())


def ta(ca: Any) -> tuple[int, int, int, bytes]:
    """DANE-TA Cert SHA2-256 of the issuing CA (2 0 1)."""
    return (2, 0, 1, hashlib.sha256(ca.cert.public_bytes(serialization.Encoding.DER)).digest())


@pytest.fixture
def zone() -> dict[str, Any]:
    return {
        "dane.test": {"MX": [(10, "mx1.dane.test"), (20, "mx2.dane.test")]},
        "mx1.dane.test": {"A": [MX1]},
        "mx2.dane.test": {"A": [MX2]},
        "plain.test": {"MX": [(10, "mx1.plain.test")]},
        "mx1.plain.test": {"A": [MX1]},
    }


@pytest.fixture
def dns(zone: dict[str, Any]) -> Iterator[DnsServer]:
    with DnsServer(zone, signed={"dane.test"}) as server:
        yield server


@asynccontextmanager
async def hosts(tls1: ssl.SSLContext | None, tls2: ssl.SSLContext | None
                ) -> AsyncIterator[tuple[SmtpSink, SmtpSink]]:
    async with SmtpSink(host=MX1, tls=tls1) as one, \
            SmtpSink(host=MX2, port=one.port, tls=tls2) as two:
        yield one, two


async def deliver(dns: DnsServer, port: int, domain: str, tls: TlsPolicy) -> Result:
    mx = MxTransport(SmtpTransport("gw.brondby.test", timeout=5, connect_timeout=2),
                     MxResolver(DnsResolver([dns.nameserver], timeout=5)), port=port)
    return await mx.deliver(Route("mx"), domain, "anna@brondby.test", [Rcpt(f"lone@{domain}")],
                            MESSAGE, tls, queue_id="Q1")


def only(result: Result) -> tuple[int, str]:
    [reply] = result.replies.values()
    return reply.code, reply.status


def tlsa(dns: DnsServer, port: int, host: str, *records: Any) -> None:
    """Publish `records` for `host` on `port`; none: the lookup fails (SERVFAIL)."""
    dns.zone[f"_{port}._tcp.{host}"] = {"TLSA": list(records)} if records else "SERVFAIL"


def no_mail(*sinks: SmtpSink) -> bool:
    return all(s.messages == [] and not [c for c in s.commands if c[0] == "MAIL"]
               for s in sinks)


async def test_dane_ee_delivers_to_an_untrusted_certificate_with_any_name(dns, pki):
    async with hosts(pki["self"].server_context(), None) as (one, two):
        tlsa(dns, one.port, "mx1.dane.test", ee(pki["self"]))
        result = await deliver(dns, one.port, "dane.test", DANE_ONLY)
    assert only(result) == (OK, "2.0.0")
    assert one.messages[0].tls and one.messages[0].tls_version in ("TLSv1.2", "TLSv1.3")
    assert ("MAIL", False) not in one.commands


async def test_dane_ta_delivers_when_the_chain_reaches_the_anchor(dns, pki):
    names: list[str] = []
    context = pki["mx1"].server_context()
    context.sni_callback = lambda sslobj, name, ctx: names.append(name)
    async with hosts(context, None) as (one, _):
        tlsa(dns, one.port, "mx1.dane.test", ta(pki["issuing"]))
        result = await deliver(dns, one.port, "dane.test", DANE_ONLY)
    assert only(result) == (OK, "2.0.0") and one.messages[0].tls
    assert names == ["mx1.dane.test"]  # SNI is the MX host name (RFC 7672 8.1)


async def test_dane_ta_with_the_wrong_name_moves_to_the_next_host(dns, pki):
    async with hosts(pki["mx2"].server_context(), pki["mx2"].server_context()) as (one, two):
        for host in ("mx1.dane.test", "mx2.dane.test"):
            tlsa(dns, one.port, host, ta(pki["issuing"]))
        result = await deliver(dns, one.port, "dane.test", DANE_ONLY)
    assert only(result) == (OK, "2.0.0")
    assert no_mail(one) and len(two.messages) == 1


async def test_a_tlsa_matching_nothing_defers_and_sends_nothing(dns, pki, caplog):
    async with hosts(pki["mx1"].server_context(), pki["mx2"].server_context()) as (one, two):
        for host in ("mx1.dane.test", "mx2.dane.test"):
            tlsa(dns, one.port, host, ee(pki["self"]))
        result = await deliver(dns, one.port, "dane.test", DANE_ONLY)
    assert only(result) == (451, "4.7.5") and result.tls_failure
    assert "matches no TLSA record" in result.replies["lone@dane.test"].text
    assert no_mail(one, two)
    assert "no TLSA record of mx1.dane.test matched: DANE-EE 3 1 1" in caplog.text


async def test_a_dane_host_without_starttls_gets_no_plaintext(dns, pki):
    async with hosts(None, None) as (one, two):
        for host in ("mx1.dane.test", "mx2.dane.test"):
            tlsa(dns, one.port, host, ee(pki["mx1"]))
        for level in (DANE, DANE_ONLY):
            result = await deliver(dns, one.port, "dane.test", level)
            assert only(result) == (451, "4.7.5")
    assert no_mail(one, two)


async def test_tls_below_the_minimum_is_refused(dns, pki):
    old = pki["mx1"].server_context(maximum=ssl.TLSVersion.TLSv1_2)
    async with hosts(old, old) as (one, two):
        for host in ("mx1.dane.test", "mx2.dane.test"):
            tlsa(dns, one.port, host, ee(pki["mx1"]))
        result = await deliver(dns, one.port, "dane.test", TlsPolicy("dane-only",
                                                                     min_version="1.3"))
    assert only(result) == (451, "4.7.5") and no_mail(one, two)


async def test_a_failed_tlsa_lookup_skips_the_host(dns, pki):
    async with hosts(pki["mx1"].server_context(), pki["mx2"].server_context()) as (one, two):
        tlsa(dns, one.port, "mx1.dane.test")  # SERVFAIL
        tlsa(dns, one.port, "mx2.dane.test", ee(pki["mx2"]))
        for level in (DANE, DANE_ONLY):
            assert only(await deliver(dns, one.port, "dane.test", level)) == (OK, "2.0.0")
    assert one.connections == 0 and len(two.messages) == 2


async def test_dane_only_needs_signed_mx_records(dns, pki):
    async with hosts(pki["mx1"].server_context(), None) as (one, _):
        tlsa(dns, one.port, "mx1.plain.test", ee(pki["mx1"]))
        result = await deliver(dns, one.port, "plain.test", DANE_ONLY)
    assert only(result) == (451, "4.7.5") and "not DNSSEC-signed" in str(result.replies)
    assert one.connections == 0


async def test_dane_only_skips_a_host_without_tlsa(dns, pki):
    async with hosts(pki["mx1"].server_context(), pki["mx2"].server_context()) as (one, two):
        tlsa(dns, one.port, "mx2.dane.test", ee(pki["mx2"]))  # none for mx1
        result = await deliver(dns, one.port, "dane.test", DANE_ONLY)
    assert only(result) == (OK, "2.0.0") and one.connections == 0 and len(two.messages) == 1


async def test_opportunistic_dane_without_signed_records_is_may(dns, pki):
    """Untagged mail: no TLSA, or unsigned DNS, changes nothing (RFC 7672 2.2)."""
    async with hosts(None, None) as (one, _):
        tlsa(dns, one.port, "mx1.plain.test", ee(pki["self"]))  # not signed: ignored
        assert only(await deliver(dns, one.port, "plain.test", DANE)) == (OK, "2.0.0")
        assert only(await deliver(dns, one.port, "dane.test", DANE)) == (OK, "2.0.0")
    assert len(one.messages) == 2 and not one.messages[0].tls


async def test_signed_records_none_usable_mean_tls_without_authentication(dns, pki):
    pkix = (1, 1, 1, ee(pki["mx1"])[3])  # PKIX-EE: not for SMTP, but TLS is then a must
    async with hosts(None, pki["self"].server_context()) as (one, two):
        for host in ("mx1.dane.test", "mx2.dane.test"):
            tlsa(dns, one.port, host, pkix)
        assert only(await deliver(dns, one.port, "dane.test", DANE)) == (OK, "2.0.0")
        assert only(await deliver(dns, one.port, "dane.test", DANE_ONLY)) == (451, "4.7.5")
    assert no_mail(one) and len(two.messages) == 1 and two.messages[0].tls


async def test_an_smtp_route_cannot_carry_a_destination_level(pki):
    async with SmtpSink() as sink:
        transport = SmtpTransport("gw.brondby.test", timeout=5, connect_timeout=2)
        for level in (DANE, DANE_ONLY, TlsPolicy("mta-sts")):
            result = await transport.deliver(Route("smtp", sink.host, sink.port), "dane.test",
                                             "anna@brondby.test", [Rcpt("lone@dane.test")],
                                             MESSAGE, level, queue_id="Q1")
            assert only(result) == (451, "4.7.5") and result.tls_failure
    assert sink.connections == 0
