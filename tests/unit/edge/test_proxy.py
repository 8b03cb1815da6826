"""PROXY protocol at the edge: who may send a header, and which address then counts.

A real listener (GatewaySMTP with the real Handler and spool) in the test's loop, and
smtplib clients from distinct loopback addresses: 127.0.0.9 is the trusted balancer,
127.0.0.5 any other peer. Headers here are hand-made for the cases HAProxy never sends;
tests/e2e/test_proxy_protocol.py puts HAProxy itself in front of the daemon.
"""

from __future__ import annotations

import asyncio
import ipaddress
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from prometheus_client import REGISTRY

from gateway.config import TagsConfig
from gateway.edge.handler import Handler
from gateway.edge.limits import ConnectionLimits
from gateway.edge.protocol import GatewaySMTP
from gateway.edge.proxy import ProxyPolicy, in_networks
from gateway.model import Envelope
from gateway.spool.store import Spool
from tests.support import proxyheader
from tests.support.proxyheader import ProxiedSMTP
from tests.support.sink import server_tls

OK = 250
GREETING = 220
TOO_MANY = 421
RELAY_DENIED = 554
UNKNOWN_COMMAND = 500

PROXY_ADDR = "127.0.0.9"
OTHER_ADDR = "127.0.0.5"
MESSAGE = b"From: a@brondby.dk\r\nTo: b@hotmail.dk\r\nSubject: hej\r\n\r\nhej\r\n"


@dataclass
class Edge:
    """One listener on 127.0.0.1 that trusts 127.0.0.9 and relays for 10.1.2.0/24."""

    port: int
    accepted: list[Envelope]


@pytest.fixture
async def edge(tmp_path: Path, request) -> AsyncIterator[Edge]:
    tls, proxy = getattr(request, "param", (None, True))
    limits = ConnectionLimits("gw.test", max_connections=100, max_per_client=1)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    nets = [ipaddress.ip_network("10.1.2.0/24"), ipaddress.ip_network("2001:db8::/32")]
    accepted: list[Envelope] = []
    handler = Handler(spool, nets, TagsConfig(),
                      accepted.append)
    policy = ProxyPolicy([ipaddress.ip_network(f"{PROXY_ADDR}/32")], timeout=0.5)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: GatewaySMTP(handler, hostname="gw.test", decode_data=False, tls_context=tls,
                            proxy=policy if proxy else None, limits=limits, loop=loop),
        "127.0.0.1", 0)
    yield Edge(server.sockets[0].getsockname()[1], accepted)
    server.close()
    await server.wait_closed()


def rejections() -> float:
    return REGISTRY.get_sample_value("sendsikkert_smtp_rejections_total",
                                     {"reason": "proxy_header"}) or 0.0


def rcpt_code(edge: Edge, header: bytes, source: str, starttls: bool = False,
              ca: trustme.CA | None = None) -> int:
    """Open a session from `source` with `header`, send MAIL and RCPT, return RCPT's code."""
    with ProxiedSMTP(header, "127.0.0.1", edge.port, timeout=5,
                     source_address=(source, 0)) as client:
        client.ehlo("exchange.brondby.dk")
        if starttls:
            assert ca is not None
            context = ssl.create_default_context()
            ca.configure_trust(context)
            client.starttls(context=context)
            client.ehlo("exchange.brondby.dk")
        client.mail("a@brondby.dk")
        code, _ = client.rcpt("b@hotmail.dk")
        if code == OK:
            assert client.data(MESSAGE)[0] == OK
        return code


@pytest.mark.parametrize("header", [
    proxyheader.v1("10.1.2.3", 51000),
    proxyheader.v2("10.1.2.3", 51000),
    proxyheader.v1("2001:db8::25", 51000, dest="::1"),
    proxyheader.v2("2001:db8::25", 51000, dest="::1"),
], ids=["v1", "v2", "v1-ipv6", "v2-ipv6"])
async def test_a_trusted_proxys_header_names_the_client(edge: Edge, header: bytes):
    assert await asyncio.to_thread(rcpt_code, edge, header, PROXY_ADDR) == OK
    [queued] = edge.accepted
    assert queued.client in ("10.1.2.3", "2001:db8::25")


async def test_the_named_client_decides_relaying(edge: Edge):
    header = proxyheader.v2("192.0.2.7")
    assert await asyncio.to_thread(rcpt_code, edge, header, PROXY_ADDR) == RELAY_DENIED
    assert edge.accepted == []


async def test_a_local_header_leaves_the_proxys_own_address(edge: Edge):
    """v2 LOCAL (a health check) names no client: the proxy is the client, and may not relay."""
    header = proxyheader.v2(command=proxyheader.LOCAL, family=proxyheader.UNSPEC,
                            protocol=0, addresses=b"")
    assert await asyncio.to_thread(rcpt_code, edge, header, PROXY_ADDR) == RELAY_DENIED
    assert await asyncio.to_thread(rcpt_code, edge, b"PROXY UNKNOWN\r\n", PROXY_ADDR) == (
        RELAY_DENIED)


@pytest.mark.parametrize("header", [
    b"",  # straight to SMTP
    b"PROXY TCP4 10.1.2.3\r\n",
    b"PROXY TCP4 10.1.2.3 127.0.0.1 51000 25 extra\r\n",
    b"PROXY TCP4 2001:db8::25 127.0.0.1 51000 25\r\n",
    proxyheader.v2("10.1.2.3", protocol=proxyheader.DGRAM),
    proxyheader.v2(family=proxyheader.UNIX, addresses=b"/run/a".ljust(108, b"\0") * 2),
    proxyheader.v2("10.1.2.3")[:20],  # cut short, then nothing (the timeout ends it)
], ids=["none", "v1-short", "v1-extra", "v1-family-mismatch", "v2-udp", "v2-unix", "v2-cut"])
async def test_a_trusted_proxy_without_a_valid_header_is_closed(edge: Edge, header: bytes):
    before = rejections()

    def session() -> bytes:
        with socket.create_connection(("127.0.0.1", edge.port), 5,
                                      source_address=(PROXY_ADDR, 0)) as s:
            s.sendall(header or b"EHLO exchange.brondby.dk\r\n")
            return s.recv(1024)  # b"" once the gateway closes, without a banner

    assert await asyncio.to_thread(session) == b""
    await asyncio.sleep(0.05)
    assert rejections() == before + 1


async def test_a_proxy_that_hangs_up_at_once_is_no_error(edge: Edge):
    """A balancer's plain TCP health check connects and closes: nothing to warn about."""
    before = rejections()
    await asyncio.to_thread(
        lambda: socket.create_connection(("127.0.0.1", edge.port), 5,
                                         source_address=(PROXY_ADDR, 0)).close())
    await asyncio.sleep(0.8)  # past the header timeout
    assert rejections() == before


async def test_any_other_peer_never_has_a_proxy_line_honoured(edge: Edge):
    def session() -> tuple[bytes, int]:
        with smtplib.SMTP("127.0.0.1", edge.port, timeout=5,
                          source_address=(OTHER_ADDR, 0)) as client:
            code, reply = client.docmd("PROXY", "TCP4 10.1.2.3 127.0.0.1 51000 25")
            assert code == UNKNOWN_COMMAND, reply
            client.ehlo("exchange.brondby.dk")
            client.mail("a@brondby.dk")
            return reply, client.rcpt("b@hotmail.dk")[0]

    _, code = await asyncio.to_thread(session)
    assert code == RELAY_DENIED


async def test_a_v2_header_from_another_peer_is_not_read(edge: Edge):
    """The binary header is plain bytes to SMTP; its signature even holds a QUIT."""
    def session() -> bytes:
        with socket.create_connection(("127.0.0.1", edge.port), 5,
                                      source_address=(OTHER_ADDR, 0)) as s:
            s.sendall(proxyheader.v2("10.1.2.3") + b"EHLO x\r\nMAIL FROM:<a@brondby.dk>\r\n"
                      b"RCPT TO:<b@hotmail.dk>\r\n")
            replies = b""
            while chunk := s.recv(4096):
                replies += chunk
            return replies

    replies = await asyncio.to_thread(session)
    assert b"\r\n221 " in replies and b"2.1.5" not in replies


@pytest.mark.parametrize("edge", [(None, False)], indirect=True)
async def test_without_proxy_protocol_even_the_balancer_sends_plain_smtp(edge: Edge):
    def session() -> int:
        with smtplib.SMTP("127.0.0.1", edge.port, timeout=5,
                          source_address=(PROXY_ADDR, 0)) as client:
            assert client.docmd("PROXY", "TCP4 10.1.2.3 127.0.0.1 51000 25")[0] == (
                UNKNOWN_COMMAND)
            client.ehlo("x")
            client.mail("a@brondby.dk")
            return client.rcpt("b@hotmail.dk")[0]

    assert await asyncio.to_thread(session) == RELAY_DENIED


_CA = trustme.CA()


@pytest.mark.parametrize("edge", [(server_tls(_CA, "127.0.0.1"), True)], indirect=True)
async def test_the_client_survives_starttls(edge: Edge):
    """aiosmtpd begins a new session after STARTTLS; the proxied client must stay."""
    code = await asyncio.to_thread(rcpt_code, edge, proxyheader.v1("10.1.2.3"), PROXY_ADDR,
                                   True, _CA)
    assert code == OK
    assert edge.accepted[0].client == "10.1.2.3"


async def test_the_limits_count_the_client_behind_the_balancer(edge: Edge):
    """One connection per client here: the balancer's own address must not be the client."""
    def greeting(header: bytes) -> tuple[socket.socket, int]:
        s = socket.create_connection(("127.0.0.1", edge.port), 5, source_address=(PROXY_ADDR, 0))
        s.sendall(header)
        return s, int(s.recv(1024)[:3])

    first, code = await asyncio.to_thread(greeting, proxyheader.v2("10.1.2.3"))
    assert code == GREETING
    other, code = await asyncio.to_thread(greeting, proxyheader.v2("10.1.2.4"))
    assert code == GREETING
    again, code = await asyncio.to_thread(greeting, proxyheader.v2("10.1.2.3"))
    assert code == TOO_MANY
    for s in (first, other, again):
        s.close()


@pytest.mark.parametrize("peer,expected", [
    (("10.1.2.3", 1), True), (("::ffff:10.1.2.3", 1, 0, 0), True), (("10.1.3.3", 1), False),
    (("fe80::1%eth0", 1, 0, 2), False), (None, False), ("not an address", False),
])
def test_in_networks(peer, expected):
    assert in_networks(peer, [ipaddress.ip_network("10.1.2.0/24")]) is expected
