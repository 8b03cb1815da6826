"""Outbound sessions kept per next hop: reused with RSET, never across TLS policies or
names, dropped when worn out or closed by the hop, QUIT when idle."""

from __future__ import annotations

import asyncio

import trustme

from gateway.delivery import Rcpt, TlsPolicy, parse_route
from gateway.delivery.connections import SessionCache
from gateway.delivery.smtp import SmtpTransport
from tests.support.sink import Hop, SmtpSink, server_tls

OK = 250
MESSAGE = b"From: anna@brondby.test\r\nTo: lone@partner.test\r\nSubject: Hej\r\n\r\nTekst.\r\n"
MAY = TlsPolicy("may")


async def send(transport: SmtpTransport, sink: SmtpSink, tls: TlsPolicy = MAY) -> int:
    result = await transport.deliver(parse_route(sink.route), "partner.test",
                                     "anna@brondby.test", (Rcpt("lone@partner.test"),),
                                     MESSAGE, tls, queue_id="Q1")
    return result.replies["lone@partner.test"].code


async def test_messages_to_one_hop_share_a_session_reset_between_them(hop: Hop):
    transport = SmtpTransport("gw.brondby.test", timeout=5)
    async with hop() as sink:
        assert [await send(transport, sink) for _ in range(5)] == [OK] * 5
        await sink.wait_for(5)
        assert sink.connections == 1
        assert [c for c, _ in sink.commands].count("EHLO") == 1
        assert [c for c, _ in sink.commands].count("RSET") == 4
        await transport.sessions.close()


async def test_concurrent_messages_open_sessions_side_by_side_and_keep_them(hop: Hop):
    transport = SmtpTransport("gw.brondby.test", timeout=5)
    async with hop() as sink:
        assert await asyncio.gather(*(send(transport, sink) for _ in range(3))) == [OK] * 3
        assert await asyncio.gather(*(send(transport, sink) for _ in range(3))) == [OK] * 3
        assert sink.connections == 3
        await transport.sessions.close()


async def test_no_session_is_shared_across_tls_policies(tmp_path, hop: Hop):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    verify = TlsPolicy("verify", ca_file, "1.2")
    transport = SmtpTransport("gw.brondby.test", timeout=5)
    async with hop(tls=server_tls(ca, "127.0.0.1")) as sink:
        assert await send(transport, sink, MAY) == OK
        assert await send(transport, sink, verify) == OK
        assert await send(transport, sink, verify) == OK
        assert sink.connections == 2
        assert all(tls for _, tls in sink.commands if _ == "MAIL")
        await transport.sessions.close()


async def test_a_worn_session_is_closed_and_a_new_one_opened(hop: Hop):
    transport = SmtpTransport("gw.brondby.test", timeout=5,
                              sessions=SessionCache(max_messages=2))
    async with hop() as sink:
        assert [await send(transport, sink) for _ in range(5)] == [OK] * 5
        assert sink.connections == 3
        await transport.sessions.close()


async def test_a_session_the_hop_closed_while_idle_is_replaced(hop: Hop):
    transport = SmtpTransport("gw.brondby.test", timeout=5)
    async with hop() as sink:
        assert await send(transport, sink) == OK
        sink.drop_connections()
        await asyncio.sleep(0.05)
        assert await send(transport, sink) == OK
        assert sink.connections == 2
        await transport.sessions.close()


async def test_an_idle_session_is_closed_after_the_idle_time(hop: Hop):
    transport = SmtpTransport("gw.brondby.test", timeout=5, sessions=SessionCache(idle=0.1))
    async with hop() as sink:
        assert await send(transport, sink) == OK
        await asyncio.sleep(0.4)
        assert transport.sessions.take(("127.0.0.1", sink.port, "127.0.0.1", MAY, True)) is None
        assert await send(transport, sink) == OK
        assert sink.connections == 2
        await transport.sessions.close()
