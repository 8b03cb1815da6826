"""Delivery to real SMTP servers on loopback: TLS for tunnel members, MX, retries, bounces.

The gateway is a subprocess; the sinks and the DNS server run in this test's process.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import ssl

import pytest
import trustme

from tests.support.daemon import Daemon, GatewayConfig
from tests.support.dns import DnsServer
from tests.support.sink import SmtpSink

TAGGED = (b"From: Lene Larsen <lela@brondby.dk>\r\nTo: sikkermail@ast.dk\r\n"
          b"Subject: aeldreomsorg%% Vedr. klage\r\nMessage-ID: <t1@brondby.dk>\r\n\r\n"
          b"Fortrolig tekst\r\n")


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def trust(config: GatewayConfig, ca: trustme.CA) -> None:
    path = config.root / "sepo-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    config.sepo_ca_file = str(path)


async def start(config: GatewayConfig, daemons: list[Daemon]) -> Daemon:
    daemon = Daemon(config)
    daemons.append(daemon)
    return await asyncio.to_thread(daemon.start)


async def send(gateway: Daemon, sender: str, recipients: list[str], data: bytes, **kw) -> str:
    return await asyncio.to_thread(gateway.send, sender, recipients, data, **kw)


async def wait_for(predicate, within: float = 15) -> None:
    """Poll a condition on the other process (the daemon) until it holds."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - the state lives in another process
            await asyncio.sleep(0.05)


def deferred(gateway: Daemon, label: str) -> float:
    return gateway.metric("sendsikkert_recipients_total", **{"class": label,
                                                            "outcome": "deferred"})


async def test_tunnel_goes_over_verified_tls(config, daemons, tls_ca):
    async with SmtpSink(tls=server_context(tls_ca, "127.0.0.1"), dsn=True) as sink:
        config.transport = {"ast.dk": sink.route}
        trust(config, tls_ca)
        gateway = await start(config, daemons)
        await send(gateway, "lela@brondby.dk", ["sikkermail@ast.dk"], TAGGED,
                   rcpt_options=("NOTIFY=FAILURE", "ORCPT=rfc822;sikkermail@ast.dk"))
        [msg] = await sink.wait_for(1, within=15)
    assert msg.tls and msg.tls_version in ("TLSv1.2", "TLSv1.3")
    assert ("MAIL", False) not in sink.commands
    assert msg.rcpt_tos == ["sikkermail@ast.dk"]
    assert msg.rcpt_options["sikkermail@ast.dk"] == ["NOTIFY=FAILURE",
                                                     "ORCPT=rfc822;sikkermail@ast.dk"]
    parsed = email.message_from_bytes(msg.content, policy=email.policy.default)
    assert parsed["Subject"] == "Vedr. klage" and "X-Send-Sikkert" not in parsed
    assert b"Fortrolig tekst" in msg.content


@pytest.mark.parametrize("problem", ["untrusted", "wrong name", "no starttls", "old tls"])
async def test_tunnel_never_falls_back_to_plaintext(config, daemons, tls_ca, problem):
    other = trustme.CA()
    context = {
        "untrusted": server_context(other, "127.0.0.1"),
        "wrong name": server_context(tls_ca, "mail.example.org"),
        "no starttls": None,
        "old tls": server_context(tls_ca, "127.0.0.1"),
    }[problem]
    if problem == "old tls":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        config.min_tls = "1.3"
    async with SmtpSink(tls=context) as sink:
        config.transport = {"ast.dk": sink.route}
        trust(config, tls_ca)
        gateway = await start(config, daemons)
        await send(gateway, "lela@brondby.dk", ["sikkermail@ast.dk"], TAGGED)
        await wait_for(lambda: deferred(gateway, "tunnel") >= 2)  # tried, then retried
    assert sink.messages == []
    assert not [c for c in sink.commands if c[0] in ("MAIL", "RCPT", "DATA")]
    assert gateway.metric("sendsikkert_tls_failures_total", route="tunnel") >= 2
    assert gateway.outbox() == []  # deferred, not bounced: no DSN yet


async def test_mx_route_with_dns_and_tunnel_name_check(config, daemons, tls_ca):
    async with SmtpSink(tls=server_context(tls_ca, "mx.ast.dk")) as sink:
        zone = {"ast.dk": {"MX": [(10, "mx.ast.dk")]}, "mx.ast.dk": {"A": ["127.0.0.1"]},
                "hotmail.dk": {"MX": [(5, "mx.ast.dk")]}, "gmail.dk": {"MX": [(5, "mx.ast.dk")]}}
        with DnsServer(zone) as dns:
            config.default_route = "mx"
            config.nameservers = [dns.address]
            config.mx_port = sink.port
            trust(config, tls_ca)
            gateway = await start(config, daemons)
            await send(gateway, "lela@brondby.dk", ["sikkermail@ast.dk"], TAGGED)
            plain = b"From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: hej\r\n\r\nhej\r\n"
            await send(gateway, "a@brondby.dk", ["x@hotmail.dk", "y@gmail.dk"], plain)
            messages = await sink.wait_for(3, within=15)
            assert {("ast.dk", "MX"), ("hotmail.dk", "MX"), ("gmail.dk", "MX")} <= set(
                dns.queries)
    # One transaction per recipient domain: each domain's MX is its own next hop.
    assert sorted(m.rcpt_tos for m in messages) == [["sikkermail@ast.dk"], ["x@hotmail.dk"],
                                                    ["y@gmail.dk"]]
    assert all(m.tls for m in messages)


async def test_recipients_sharing_a_hop_share_one_transaction(config, daemons):
    async with SmtpSink(refuse={"gone@ast.dk": "550 5.1.1 no such user"}) as sink:
        config.default_route = sink.route
        gateway = await start(config, daemons)
        data = b"From: a@brondby.dk\r\nTo: x@hotmail.dk, y@hotmail.dk\r\nSubject: s\r\n\r\nb\r\n"
        await send(gateway, "a@brondby.dk", ["x@hotmail.dk", "y@hotmail.dk", "gone@ast.dk"],
                   data)
        [msg] = await sink.wait_for(1, within=15)
        assert sorted(msg.rcpt_tos) == ["x@hotmail.dk", "y@hotmail.dk"]
        [dsn] = await asyncio.to_thread(gateway.wait_outbox, 1)  # the 550 bounces
    report = email.message_from_bytes(dsn.read_bytes(), policy=email.policy.default)
    recipient = report.get_payload()[1].get_payload()[1]
    assert recipient["Final-Recipient"] == "rfc822; gone@ast.dk"
    assert recipient["Status"] == "5.1.1"
    assert "550 5.1.1 no such user" in recipient["Diagnostic-Code"]


def large_body(megabytes: int) -> bytes:
    """Lines of 64 bytes that start with a dot, so the body's 1 MiB pieces (what the
    gateway reads from the spool at a time) start with one; in the second MiB one line
    is a byte longer, so a piece ends between the CR and the LF of a line."""
    line = b".%061d\r\n"
    lines = [line % i for i in range(16384)]
    lines += [b"." + line % 0] + [line % i for i in range(16383)]
    lines += [line % i for i in range(16384 * (megabytes - 2))]
    return b"".join(lines)


async def test_a_large_message_arrives_byte_for_byte(config, daemons):
    head = (b"From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nBcc: skjult@brondby.dk\r\n"
            b"Subject: stor\r\nMessage-ID: <stor@brondby.dk>\r\n\r\n")
    body = large_body(6)
    config.max_message_size = 40 << 20
    async with SmtpSink() as sink:
        config.default_route = sink.route
        gateway = await start(config, daemons)
        await send(gateway, "a@brondby.dk", ["x@hotmail.dk"], head + body)
        [msg] = await sink.wait_for(1, within=30)
    # Only the Bcc field is gone (the DLP scan found nothing); every byte of the body came.
    assert msg.content == head.replace(b"Bcc: skjult@brondby.dk\r\n", b"") + body


async def test_temporary_failure_is_retried_until_it_works(config, daemons):
    async with SmtpSink(data_reply="451 4.3.0 try later") as sink:
        config.default_route = sink.route
        gateway = await start(config, daemons)
        data = b"From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: s\r\n\r\nb\r\n"
        await send(gateway, "a@brondby.dk", ["x@hotmail.dk"], data)
        await wait_for(lambda: deferred(gateway, "plain") >= 1)
        sink.data_reply = None
        [msg] = await sink.wait_for(1, within=15)
        assert msg.rcpt_tos == ["x@hotmail.dk"]
        await asyncio.to_thread(gateway.wait_queue_empty)
    assert gateway.outbox() == []


async def test_delay_warning_then_failure_after_max_age(config, daemons):
    config.default_route = "smtp://127.0.0.1:9"  # discard port: nothing listens
    config.delay_warning, config.max_age = 1, 4
    gateway = await start(config, daemons)
    data = b"From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: s\r\n\r\nhemmelig\r\n"
    await send(gateway, "a@brondby.dk", ["x@hotmail.dk"], data)
    files = await asyncio.to_thread(gateway.wait_outbox, 2, 20)
    reports = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
               for f in files]
    blocks = [r.get_payload()[1].get_payload()[1] for r in reports]
    assert [b["Action"] for b in blocks] == ["delayed", "failed"]
    # RFC 3464 2.3.9: a delayed notice says until when we keep trying: max_age after arrival
    until = email.utils.parsedate_to_datetime(blocks[0]["Will-Retry-Until"]).timestamp()
    arrival = email.utils.parsedate_to_datetime(
        reports[0].get_payload()[1].get_payload()[0]["Arrival-Date"]).timestamp()
    assert until - arrival == 4
    assert blocks[1]["Will-Retry-Until"] is None
    assert blocks[0]["Diagnostic-Code"].startswith("x-send-sikkert;")  # our words, not smtp
    assert all(b"hemmelig" not in f.read_bytes() for f in files)
    assert gateway.metric("sendsikkert_dsn_sent_total", action="delayed") == 1
    await asyncio.to_thread(gateway.wait_queue_empty)



@pytest.mark.parametrize("next_hop", ["dsn", "no dsn", "file"])
async def test_notify_success(config, daemons, next_hop):
    """RFC 3461 6.2: a DSN-capable next hop notifies; otherwise we say relayed/delivered."""
    data = b"From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: s\r\n\r\nhemmelig\r\n"
    options = ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;x@hotmail.dk")
    async with SmtpSink(dsn=next_hop == "dsn") as sink:
        if next_hop != "file":
            config.default_route = sink.route
        gateway = await start(config, daemons)
        await send(gateway, "a@brondby.dk", ["x@hotmail.dk"], data, rcpt_options=options)
        if next_hop == "dsn":
            [msg] = await sink.wait_for(1, within=15)
            assert msg.rcpt_options["x@hotmail.dk"] == list(options)
            await asyncio.to_thread(gateway.wait_queue_empty)
            assert gateway.outbox() == []  # the next hop notifies, not us
            return
        files = await asyncio.to_thread(gateway.wait_outbox, 2 if next_hop == "file" else 1)
    [raw] = [f.read_bytes() for f in files if b"multipart/report" in f.read_bytes()]
    report = email.message_from_bytes(raw, policy=email.policy.default)
    fields = report.get_payload()[1].get_payload()[1]
    assert fields["Action"] == ("delivered" if next_hop == "file" else "relayed")
    assert fields["Status"] == "2.0.0"
    assert fields["Original-Recipient"] == "rfc822; x@hotmail.dk"
    if next_hop == "file":  # no server path in the sender's notice, and no SMTP claimed
        assert fields["Diagnostic-Code"].startswith("x-send-sikkert;"), fields
        assert str(gateway.config.outbox) not in raw.decode(errors="replace")
    else:
        assert fields["Diagnostic-Code"] == "smtp; 250 2.0.0 OK: queued"
    assert report["X-Envelope-To"] == "a@brondby.dk"
    assert b"hemmelig" not in raw
