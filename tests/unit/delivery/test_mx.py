"""MX delivery against a real DNS server and real SMTP servers on 127.0.0.2 and 127.0.0.3."""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

from gateway.delivery import Rcpt, Result, Route, TlsPolicy
from gateway.delivery.mx import MxResolver, MxTransport
from gateway.delivery.resolver import DnsResolver
from gateway.delivery.smtp import SmtpTransport
from gateway.errors import PermanentError, TransientError
from tests.support.dns import DnsServer
from tests.support.sink import SmtpSink, server_tls

OK = 250
TEMPFAIL = 451
TRY_LATER = 450
BAD_MAILBOX = 550
NULL_MX = 556
NO_SUCH_USER = "550 5.1.1 no such user"
MAILBOX_BUSY = "451 4.2.1 mailbox busy"
GREYLISTED = "450 4.7.1 greylisted"

MX1, MX2, NOBODY = "127.0.0.2", "127.0.0.3", "127.0.0.4"  # NOBODY: nothing listens there
ZONE = {
    "partner.test": {"MX": [(20, "mx2.partner.test"), (10, "mx1.partner.test")]},
    "mx1.partner.test": {"A": [MX1]},
    "mx2.partner.test": {"A": [MX2]},
    "down.test": {"MX": [(10, "dead.down.test"), (20, "mx2.partner.test")]},
    "dead.down.test": {"A": [NOBODY]},
    "implicit.test": {"A": [MX1]},
    "nomail.test": {"MX": [(0, ".")]},
    "servfail.test": "SERVFAIL",
    "slow.test": "TIMEOUT",
    "ghost.test": {"MX": [(10, "nohost.ghost.test")]},
    "empty.test": {"TXT": []},
    "brokenmx.test": {"MX": [(10, "mx.brokenmx.test")]},
    "mx.brokenmx.test": "SERVFAIL",
    "equal.test": {"MX": [(10, "a.equal.test"), (10, "b.equal.test"), (20, "c.equal.test"),
                          (5, "first.equal.test")]},
}
MX_ROUTE = Route("mx")
MAY = TlsPolicy("may")
MESSAGE = b"From: anna@brondby.test\r\nSubject: Hej\r\n\r\nTekst.\r\n"


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer(ZONE) as server:
        yield server


@pytest.fixture
def resolver(dns: DnsServer) -> MxResolver:
    return MxResolver(DnsResolver([dns.nameserver], timeout=1))


@asynccontextmanager
async def mail_hosts(tls1: ssl.SSLContext | None = None, tls2: ssl.SSLContext | None = None,
                     refuse1: dict[str, str] | None = None,
                     refuse2: dict[str, str] | None = None, dsn1: bool = False,
                     dsn2: bool = False) -> AsyncIterator[tuple[SmtpSink, SmtpSink]]:
    """Two SMTP servers on the same port, one per MX address."""
    async with SmtpSink(host=MX1, tls=tls1, refuse=refuse1, dsn=dsn1) as one, \
            SmtpSink(host=MX2, port=one.port, tls=tls2, refuse=refuse2, dsn=dsn2) as two:
        yield one, two


def transport(resolver: MxResolver, port: int, max_addresses: int = 5) -> MxTransport:
    smtp = SmtpTransport("gw.brondby.test", timeout=5, connect_timeout=2)
    return MxTransport(smtp, resolver, port=port, max_addresses=max_addresses)


async def deliver(mx: MxTransport, domain: str, *locals_: str, tls: TlsPolicy = MAY) -> Result:
    rcpts = [Rcpt(f"{local}@{domain}") for local in locals_ or ("lone",)]
    return await mx.deliver(MX_ROUTE, domain, "anna@brondby.test", rcpts, MESSAGE, tls,
                            queue_id="Q1")


def only(result: Result) -> tuple[int, str]:
    [reply] = result.replies.values()
    return reply.code, reply.status


async def test_the_most_preferred_mx_gets_the_message(resolver: MxResolver) -> None:
    async with mail_hosts() as (one, two):
        result = await deliver(transport(resolver, one.port), "partner.test")
    assert only(result) == (OK, "2.0.0")
    assert len(one.messages) == 1 and two.messages == []
    assert result.peer == f"mx1.partner.test[{MX1}]:{one.port}"


async def test_an_unreachable_mx_hands_over_to_the_next(resolver: MxResolver,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    async with mail_hosts() as (one, two):
        with caplog.at_level(logging.INFO, logger="gateway.delivery"):
            result = await deliver(transport(resolver, one.port), "down.test")
    assert only(result) == (OK, "2.0.0")
    assert len(two.messages) == 1
    # One line for the host given up on; the one that answered is the result's (the log's).
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("Q1: ") and line.endswith("; trying the next host")
    assert result.peer.startswith("mx2.partner.test[")


async def test_transient_refusals_move_to_the_next_mx_permanent_ones_do_not(
        resolver: MxResolver) -> None:
    refuse = {"busy@partner.test": MAILBOX_BUSY, "gone@partner.test": NO_SUCH_USER}
    async with mail_hosts(refuse1=refuse) as (one, two):
        result = await deliver(transport(resolver, one.port), "partner.test",
                               "lone", "busy", "gone")
    assert {a: r.code for a, r in result.replies.items()} == {
        "lone@partner.test": OK, "busy@partner.test": OK, "gone@partner.test": BAD_MAILBOX}
    assert one.messages[0].rcpt_tos == ["lone@partner.test"]
    assert two.messages[0].rcpt_tos == ["busy@partner.test"]


@pytest.mark.parametrize(("dsn1", "dsn2", "relayed"), [
    (True, False, {"lone@partner.test"}),
    (False, True, {"busy@partner.test"}),
    (True, True, {"lone@partner.test", "busy@partner.test"}),
    (False, False, set()),
])
async def test_relayed_with_dsn_counts_what_each_mx_with_dsn_accepted(
        resolver: MxResolver, dsn1: bool, dsn2: bool, relayed: set[str]) -> None:
    refuse = {"busy@partner.test": MAILBOX_BUSY, "gone@partner.test": NO_SUCH_USER}
    async with mail_hosts(refuse1=refuse, dsn1=dsn1, dsn2=dsn2) as (one, two):
        result = await deliver(transport(resolver, one.port), "partner.test",
                               "lone", "busy", "gone")
    assert {a: r.code for a, r in result.replies.items()} == {
        "lone@partner.test": OK, "busy@partner.test": OK, "gone@partner.test": BAD_MAILBOX}
    assert (one.messages[0].rcpt_tos, two.messages[0].rcpt_tos) == (
        ["lone@partner.test"], ["busy@partner.test"])
    assert result.dsn_relayed == relayed


async def test_a_deferred_recipient_is_not_relayed_with_dsn(resolver: MxResolver) -> None:
    async with mail_hosts(refuse1={"busy@partner.test": MAILBOX_BUSY},
                          refuse2={"busy@partner.test": GREYLISTED},
                          dsn1=True, dsn2=True) as (one, _):
        result = await deliver(transport(resolver, one.port), "partner.test", "lone", "busy")
    assert {a: r.code for a, r in result.replies.items()} == {
        "lone@partner.test": OK, "busy@partner.test": TRY_LATER}
    assert result.dsn_relayed == {"lone@partner.test"}


async def test_the_last_transient_reply_is_kept_when_every_mx_defers(
        resolver: MxResolver) -> None:
    async with mail_hosts(refuse1={"busy@partner.test": MAILBOX_BUSY},
                          refuse2={"busy@partner.test": GREYLISTED}) as (one, _):
        result = await deliver(transport(resolver, one.port), "partner.test", "busy")
    assert only(result) == (450, "4.7.1")
    assert not result.tls_failure


async def test_no_mx_falls_back_to_the_address_record(resolver: MxResolver) -> None:
    async with mail_hosts() as (one, _):
        result = await deliver(transport(resolver, one.port), "implicit.test")
    assert only(result) == (OK, "2.0.0")
    assert len(one.messages) == 1


async def test_an_address_literal_needs_no_dns(resolver: MxResolver, dns: DnsServer) -> None:
    asked = len(dns.queries)
    async with mail_hosts() as (one, _):
        result = await deliver(transport(resolver, one.port), f"[{MX1}]")
    assert only(result) == (OK, "2.0.0")
    assert len(dns.queries) == asked


async def test_the_address_limit_is_honoured(resolver: MxResolver) -> None:
    async with mail_hosts() as (one, two):
        result = await deliver(transport(resolver, one.port, max_addresses=1), "down.test")
    assert only(result) == (TEMPFAIL, "4.4.1")
    assert two.messages == []


# DNS answers that end the attempt

@pytest.mark.parametrize(("domain", "expected"), [
    ("nomail.test", (NULL_MX, "5.1.10")),
    ("nxdomain.test", (BAD_MAILBOX, "5.1.2")),
    ("empty.test", (BAD_MAILBOX, "5.1.2")),
    ("servfail.test", (TEMPFAIL, "4.4.3")),
    ("slow.test", (TEMPFAIL, "4.4.3")),
    ("brokenmx.test", (TEMPFAIL, "4.4.3")),
    ("ghost.test", (TEMPFAIL, "4.4.4")),
    ("bad..domain", (BAD_MAILBOX, "5.1.2")),
])
async def test_dns_outcomes(resolver: MxResolver, domain: str, expected: tuple[int, str]) -> None:
    async with mail_hosts() as (one, two):
        result = await deliver(transport(resolver, one.port), domain)
    assert only(result) == expected
    assert one.connections == two.connections == 0


async def test_mx_records_are_sorted_and_equal_preferences_shuffled(dns: DnsServer) -> None:
    orders = set()
    for seed in range(20):
        hosts = await MxResolver(DnsResolver([dns.nameserver]),
                                 rng=random.Random(seed)).mail_hosts("equal.test")
        assert hosts.hosts[0] == "first.equal.test" and hosts.hosts[3] == "c.equal.test"
        orders.add(tuple(hosts.hosts[1:3]))
    assert orders == {("a.equal.test", "b.equal.test"), ("b.equal.test", "a.equal.test")}


async def test_resolver_errors_are_typed(resolver: MxResolver) -> None:
    with pytest.raises(PermanentError):
        await resolver.mail_hosts("nomail.test")
    with pytest.raises(TransientError):
        await resolver.mail_hosts("servfail.test")
    assert (await resolver.addresses("nohost.ghost.test")).addresses == ()


# TLS verification names the MX host

async def test_verify_checks_the_mx_host_name(resolver: MxResolver, trusted_ca: trustme.CA,
                                              ca_file: Path) -> None:
    async with mail_hosts(tls1=server_tls(trusted_ca, "mx1.partner.test")) as (one, _):
        result = await deliver(transport(resolver, one.port), "partner.test",
                               tls=TlsPolicy("verify", ca_file))
    assert only(result) == (OK, "2.0.0")
    assert one.messages[0].tls


async def test_a_wrong_certificate_moves_to_the_next_mx(resolver: MxResolver,
                                                       trusted_ca: trustme.CA,
                                                       ca_file: Path) -> None:
    async with mail_hosts(tls1=server_tls(trusted_ca, "partner.test"),
                          tls2=server_tls(trusted_ca, "mx2.partner.test")) as (one, two):
        result = await deliver(transport(resolver, one.port), "partner.test",
                               tls=TlsPolicy("verify", ca_file))
    assert only(result) == (OK, "2.0.0")
    assert not result.tls_failure
    assert one.messages == [] and two.messages[0].tls
    assert result.peer.startswith("mx2.partner.test[")  # the log names the host that took it
    assert result.tls_version == two.messages[0].tls_version and result.tls_cipher


async def test_no_verifiable_mx_defers_without_plaintext(resolver: MxResolver,
                                                         untrusted_ca: trustme.CA,
                                                         ca_file: Path) -> None:
    async with mail_hosts(tls1=server_tls(untrusted_ca, "mx1.partner.test"),
                          tls2=None) as (one, two):
        result = await deliver(transport(resolver, one.port), "partner.test",
                               tls=TlsPolicy("verify", ca_file))
    assert result.tls_failure
    assert result.replies["lone@partner.test"].status == "4.7.5"
    assert one.messages == two.messages == []
    assert not [c for c in one.commands + two.commands if c[0] == "MAIL"]
