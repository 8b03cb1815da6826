"""SmtpTransport against a real SMTP server on loopback: TLS levels, replies, extensions."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

from gateway.delivery import Rcpt, Result, Route, TlsPolicy, parse_route
from gateway.delivery.smtp import SmtpTransport, server_reply, xtext
from gateway.spool.body import Spooled, SpoolReadError
from tests.support.sink import Hop, SmtpSink, free_port, server_tls
from tests.support.spooled import open_spooled

OK = 250
TEMPFAIL = 451
NO_SERVICE = 554
BAD_MAILBOX = 550
NOT_UTF8 = 553
NO_SUCH_USER = "550 5.1.1 no such user"
MAILBOX_BUSY = "451 4.2.1 mailbox busy, try later"
POLICY_REFUSAL = "550 5.7.1 sender refused"
CONTENT_REFUSAL = "554 5.6.0 content refused"

HOSTNAME = "gw.brondby.test"
SENDER = "anna@brondby.test"
MESSAGE = b"From: anna@brondby.test\r\nTo: lone@partner.test\r\nSubject: Hej\r\n\r\nTekst.\r\n"
MAY = TlsPolicy("may")


def verify(ca_file: Path | None, min_version: str = "1.2") -> TlsPolicy:
    return TlsPolicy("verify", ca_file, min_version)  # type: ignore[arg-type]


@pytest.fixture
def transport() -> SmtpTransport:
    return SmtpTransport(HOSTNAME, timeout=5, connect_timeout=2)


@pytest.fixture
async def plain_sink(hop: Hop) -> AsyncIterator[SmtpSink]:
    async with hop() as sink:
        yield sink


async def send(transport: SmtpTransport, route: str | Route, tls: TlsPolicy = MAY,
               rcpts: tuple[Rcpt, ...] = (Rcpt("lone@partner.test"),), data: bytes = MESSAGE,
               sender: str = SENDER, **kwargs: object) -> Result:
    route = parse_route(route) if isinstance(route, str) else route
    return await transport.deliver(route, "partner.test", sender, rcpts, data, tls,
                                   queue_id="Q1", **kwargs)  # type: ignore[arg-type]


def codes(result: Result) -> dict[str, int]:
    return {address: reply.code for address, reply in result.replies.items()}


# Opportunistic level (may)

async def test_plain_delivery_when_starttls_is_not_offered(transport: SmtpTransport,
                                                           plain_sink: SmtpSink) -> None:
    result = await send(transport, plain_sink.route)
    assert codes(result) == {"lone@partner.test": OK}
    assert not result.tls_failure
    assert (result.tls_version, result.tls_cipher) == ("", "")  # the log shows no TLS
    [msg] = plain_sink.messages
    assert (msg.mail_from, msg.rcpt_tos, msg.tls) == (SENDER, ["lone@partner.test"], False)
    assert msg.content == MESSAGE
    assert msg.helo == HOSTNAME


async def test_may_uses_starttls_without_checking_the_certificate(
        transport: SmtpTransport, untrusted_ca: trustme.CA, hop: Hop) -> None:
    async with hop(tls=server_tls(untrusted_ca, "wrong.example")) as sink:
        result = await send(transport, sink.route)
    assert codes(result) == {"lone@partner.test": OK}
    assert sink.messages[0].tls


async def test_may_falls_back_to_plaintext_when_the_handshake_fails(
        transport: SmtpTransport, trusted_ca: trustme.CA, hop: Hop) -> None:
    server = server_tls(trusted_ca, "127.0.0.1", maximum=ssl.TLSVersion.TLSv1_2)
    async with hop(tls=server) as sink:
        result = await send(transport, sink.route, TlsPolicy("may", min_version="1.3"))
    assert codes(result) == {"lone@partner.test": OK}
    assert sink.connections == 2
    assert [m.tls for m in sink.messages] == [False]


# Required and verified TLS (verify)

async def test_verify_delivers_over_tls_to_a_trusted_host_name(
        transport: SmtpTransport, trusted_ca: trustme.CA, ca_file: Path, hop: Hop) -> None:
    async with hop(tls=server_tls(trusted_ca, "localhost")) as sink:
        result = await send(transport, f"smtp://localhost:{sink.port}", verify(ca_file))
    assert codes(result) == {"lone@partner.test": OK}
    assert not result.tls_failure
    [msg] = sink.messages
    assert msg.tls and msg.tls_version in ("TLSv1.2", "TLSv1.3")
    assert result.tls_version == msg.tls_version and result.tls_cipher  # for the log
    assert all(tls for command, tls in sink.commands if command != "EHLO")


async def test_verify_checks_an_ip_literal_host_against_the_ip_san(
        transport: SmtpTransport, trusted_ca: trustme.CA, ca_file: Path, hop: Hop) -> None:
    async with hop(tls=server_tls(trusted_ca, "127.0.0.1")) as sink:
        result = await send(transport, sink.route, verify(ca_file))
    assert codes(result) == {"lone@partner.test": OK}
    assert sink.messages[0].tls


async def assert_refused_without_plaintext(result: Result, sink: SmtpSink) -> None:
    assert result.tls_failure
    for reply in result.replies.values():
        assert (reply.code, reply.status) == (TEMPFAIL, "4.7.5")
    assert sink.messages == []
    assert not [c for c in sink.commands if c[0] in ("MAIL", "RCPT", "DATA")]


async def test_verify_refuses_an_untrusted_certificate(
        transport: SmtpTransport, untrusted_ca: trustme.CA, ca_file: Path, hop: Hop) -> None:
    async with hop(tls=server_tls(untrusted_ca, "127.0.0.1")) as sink:
        result = await send(transport, sink.route, verify(ca_file),
                            rcpts=(Rcpt("a@partner.test"), Rcpt("b@partner.test")))
    await assert_refused_without_plaintext(result, sink)
    assert set(result.replies) == {"a@partner.test", "b@partner.test"}
    assert "not trusted" in result.replies["a@partner.test"].text


async def test_verify_with_the_system_store_refuses_a_private_ca(
        transport: SmtpTransport, trusted_ca: trustme.CA, hop: Hop) -> None:
    async with hop(tls=server_tls(trusted_ca, "127.0.0.1")) as sink:
        result = await send(transport, sink.route, verify(None))
    await assert_refused_without_plaintext(result, sink)


async def test_verify_refuses_a_certificate_for_another_name(
        transport: SmtpTransport, trusted_ca: trustme.CA, ca_file: Path, hop: Hop) -> None:
    async with hop(tls=server_tls(trusted_ca, "other.example")) as sink:
        result = await send(transport, f"smtp://localhost:{sink.port}", verify(ca_file))
    await assert_refused_without_plaintext(result, sink)


async def test_verify_never_sends_in_plaintext_when_starttls_is_missing(
        transport: SmtpTransport, plain_sink: SmtpSink, ca_file: Path) -> None:
    result = await send(transport, plain_sink.route, verify(ca_file))
    await assert_refused_without_plaintext(result, plain_sink)
    assert "does not offer STARTTLS" in result.replies["lone@partner.test"].text


async def test_verify_enforces_the_minimum_tls_version(
        transport: SmtpTransport, trusted_ca: trustme.CA, ca_file: Path, hop: Hop) -> None:
    server = server_tls(trusted_ca, "127.0.0.1", maximum=ssl.TLSVersion.TLSv1_2)
    async with hop(tls=server) as sink:
        refused = await send(transport, sink.route, verify(ca_file, "1.3"))
        await assert_refused_without_plaintext(refused, sink)
        assert sink.connections == 1  # no second, plaintext attempt
        accepted = await send(transport, sink.route, verify(ca_file, "1.2"))
    assert codes(accepted) == {"lone@partner.test": OK}
    assert sink.messages[0].tls_version == "TLSv1.2"


async def test_verify_with_a_missing_ca_file_defers(
        transport: SmtpTransport, trusted_ca: trustme.CA, tmp_path: Path, hop: Hop) -> None:
    async with hop(tls=server_tls(trusted_ca, "127.0.0.1")) as sink:
        result = await send(transport, sink.route, verify(tmp_path / "missing.pem"))
    await assert_refused_without_plaintext(result, sink)


async def test_a_changed_ca_file_is_read_again(transport: SmtpTransport,
                                              trusted_ca: trustme.CA, untrusted_ca: trustme.CA,
                                              tmp_path: Path, hop: Hop) -> None:
    ca = tmp_path / "ca.pem"
    untrusted_ca.cert_pem.write_to_path(str(ca))
    async with hop(tls=server_tls(trusted_ca, "127.0.0.1")) as sink:
        before = await send(transport, sink.route, verify(ca))
        trusted_ca.cert_pem.write_to_path(str(ca))
        later = time.time_ns() + 10**9  # a new mtime even on a coarse clock
        os.utime(ca, ns=(later, later))
        after = await send(transport, sink.route, verify(ca))
    assert before.tls_failure
    assert codes(after) == {"lone@partner.test": OK}


# Replies per recipient

async def test_each_recipient_gets_its_own_reply(transport: SmtpTransport, hop: Hop) -> None:
    refuse = {"gone@partner.test": NO_SUCH_USER, "busy@partner.test": MAILBOX_BUSY}
    async with hop(refuse=refuse) as sink:
        result = await send(transport, sink.route, rcpts=(
            Rcpt("lone@partner.test"), Rcpt("gone@partner.test"), Rcpt("busy@partner.test")))
    assert codes(result) == {"lone@partner.test": OK, "gone@partner.test": BAD_MAILBOX,
                             "busy@partner.test": TEMPFAIL}
    assert result.replies["gone@partner.test"].status == "5.1.1"
    assert result.replies["gone@partner.test"].text == "no such user"
    assert result.replies["busy@partner.test"].permanent is False
    assert sink.messages[0].rcpt_tos == ["lone@partner.test"]


async def test_the_data_reply_applies_to_the_accepted_recipients(
        transport: SmtpTransport, hop: Hop) -> None:
    async with hop(refuse={"gone@partner.test": NO_SUCH_USER},
                        data_reply=CONTENT_REFUSAL) as sink:
        result = await send(transport, sink.route,
                            rcpts=(Rcpt("lone@partner.test"), Rcpt("gone@partner.test")))
    assert result.replies["lone@partner.test"].status == "5.6.0"
    assert result.replies["gone@partner.test"].status == "5.1.1"


async def test_a_refused_sender_is_every_recipients_reply(transport: SmtpTransport,
        hop: Hop) -> None:
    async with hop(mail_reply=POLICY_REFUSAL) as sink:
        result = await send(transport, sink.route,
                            rcpts=(Rcpt("a@partner.test"), Rcpt("b@partner.test")))
    assert {r.status for r in result.replies.values()} == {"5.7.1"}
    assert not [c for c in sink.commands if c[0] == "RCPT"]


async def test_the_null_sender_is_sent_as_such(transport: SmtpTransport,
                                               plain_sink: SmtpSink) -> None:
    result = await send(transport, plain_sink.route, sender="")
    assert codes(result) == {"lone@partner.test": OK}
    assert plain_sink.messages[0].mail_from == "<>"


# Next hop failures

async def test_connection_refused_defers_every_recipient(transport: SmtpTransport) -> None:
    result = await send(transport, f"smtp://127.0.0.1:{free_port()}",
                        rcpts=(Rcpt("a@partner.test"), Rcpt("b@partner.test")))
    assert {(r.code, r.status) for r in result.replies.values()} == {(TEMPFAIL, "4.4.1")}
    assert not result.tls_failure


@asynccontextmanager
async def raw_server(greeting: bytes) -> AsyncIterator[int]:
    """A TCP server that sends `greeting` (b"": nothing at all) and then only listens."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(greeting)
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()


@pytest.mark.serial
async def test_a_silent_server_times_out() -> None:
    quick = SmtpTransport(HOSTNAME, timeout=0.3, connect_timeout=0.3)
    loop = asyncio.get_running_loop()
    async with raw_server(b"") as port:
        started = loop.time()
        result = await send(quick, f"smtp://127.0.0.1:{port}")
        assert loop.time() - started < 2
    reply = result.replies["lone@partner.test"]
    assert (reply.code, reply.status) == (TEMPFAIL, "4.4.1")


async def test_a_refusing_greeting_is_reported(transport: SmtpTransport) -> None:
    async with raw_server(b"554 5.3.2 no service here\r\n") as port:
        result = await send(transport, f"smtp://127.0.0.1:{port}")
    reply = result.replies["lone@partner.test"]
    assert (reply.code, reply.status) == (NO_SERVICE, "5.3.2")


# Extensions: DSN, 8BITMIME, SMTPUTF8, SIZE

DSN_RCPTS = (Rcpt("lone@partner.test", ("FAILURE", "DELAY"), "rfc822;lone@partner.test"),
             Rcpt("b@partner.test", ("NEVER",)))


async def test_dsn_parameters_go_to_a_server_that_offers_dsn(transport: SmtpTransport,
        hop: Hop) -> None:
    async with hop(dsn=True) as sink:
        result = await send(transport, sink.route, rcpts=DSN_RCPTS, ret="HDRS",
                            envid="Q1+2Bx")
    assert set(codes(result).values()) == {OK}
    [msg] = sink.messages
    assert "RET=HDRS" in msg.mail_options and "ENVID=Q1+2Bx" in msg.mail_options
    assert msg.rcpt_options == {
        "lone@partner.test": ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;lone@partner.test"],
        "b@partner.test": ["NOTIFY=NEVER"]}


async def test_dsn_parameters_are_left_out_without_dsn(transport: SmtpTransport,
                                                       plain_sink: SmtpSink) -> None:
    result = await send(transport, plain_sink.route, rcpts=DSN_RCPTS, ret="FULL", envid="x")
    assert set(codes(result).values()) == {OK}
    [msg] = plain_sink.messages
    assert not [o for o in msg.mail_options if o.startswith(("RET=", "ENVID="))]
    assert msg.rcpt_options == {"lone@partner.test": [], "b@partner.test": []}


async def test_recipients_accepted_by_a_dsn_server_are_relayed_with_dsn(
        transport: SmtpTransport, hop: Hop) -> None:
    async with hop(dsn=True, refuse={"gone@partner.test": NO_SUCH_USER,
                                          "busy@partner.test": MAILBOX_BUSY}) as sink:
        result = await send(transport, sink.route, rcpts=(
            *DSN_RCPTS, Rcpt("gone@partner.test", ("SUCCESS",)),
            Rcpt("busy@partner.test", ("SUCCESS",))))
    assert codes(result) == {"lone@partner.test": OK, "b@partner.test": OK,
                             "gone@partner.test": BAD_MAILBOX, "busy@partner.test": TEMPFAIL}
    assert result.dsn_relayed == {"lone@partner.test", "b@partner.test"}


async def test_nothing_is_relayed_with_dsn_to_a_server_without_it(
        transport: SmtpTransport, plain_sink: SmtpSink) -> None:
    result = await send(transport, plain_sink.route, rcpts=DSN_RCPTS)
    assert set(codes(result).values()) == {OK}
    assert result.dsn_relayed == frozenset()


async def test_a_refused_data_relays_nothing_with_dsn(transport: SmtpTransport, hop: Hop) -> None:
    async with hop(dsn=True, data_reply=CONTENT_REFUSAL) as sink:
        result = await send(transport, sink.route, rcpts=DSN_RCPTS)
    assert set(codes(result).values()) == {NO_SERVICE}
    assert result.dsn_relayed == frozenset()


async def test_a_failed_session_relays_nothing_with_dsn(transport: SmtpTransport) -> None:
    result = await send(transport, f"smtp://127.0.0.1:{free_port()}", rcpts=DSN_RCPTS)
    assert set(codes(result).values()) == {TEMPFAIL}
    assert result.dsn_relayed == frozenset()


async def test_eight_bit_data_is_announced(transport: SmtpTransport,
                                           plain_sink: SmtpSink) -> None:
    await send(transport, plain_sink.route, data=MESSAGE + "Ældre og omsorg\r\n".encode())
    await send(transport, plain_sink.route)
    eight, seven = plain_sink.messages
    assert "BODY=8BITMIME" in eight.mail_options
    assert not [o for o in seven.mail_options if o.startswith("BODY=")]
    assert f"SIZE={len(MESSAGE)}" in seven.mail_options


async def test_eight_bit_is_converted_for_a_server_without_8bitmime(
        transport: SmtpTransport, hop: Hop) -> None:
    """RFC 6152 3: no 8-bit data to a server that did not ask for it; Postfix converts."""
    data = (b"From: a@x.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            + "\r\nÆldre og omsorg\r\nlinje to\r\n".encode())
    async with hop(eightbitmime=False) as sink:
        result = await send(transport, sink.route, data=data)
    assert codes(result) == {"lone@partner.test": OK}
    [msg] = sink.messages
    assert not [o for o in msg.mail_options if o.startswith("BODY=")]
    assert msg.content.isascii()
    assert msg.message["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.message.get_content() == "Ældre og omsorg\r\nlinje to\r\n"


async def test_signed_eight_bit_content_is_refused_not_broken(
        transport: SmtpTransport, hop: Hop) -> None:
    data = (b'From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; '
            b'protocol="application/pkcs7-signature"; micalg=sha-256; boundary="s"\r\n\r\n'
            b"--s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + "Ærø\r\n".encode()
            + b"--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n--s--\r\n")
    async with hop(eightbitmime=False) as sink:
        result = await send(transport, sink.route, data=data)
    assert {r.status for r in result.replies.values()} == {"5.6.3"}
    assert all(not r.remote for r in result.replies.values())
    assert sink.messages == [] and ("DATA", False) not in sink.commands


UTF8_MESSAGE = "Subject: Ældre\r\n\r\nTekst\r\n".encode()


async def test_smtputf8_is_used_when_needed_and_offered(transport: SmtpTransport, hop: Hop) -> None:
    async with hop(smtputf8=True) as sink:
        result = await send(transport, sink.route, sender="søren@brondby.test",
                            rcpts=(Rcpt("jørgen@partner.test"),), data=UTF8_MESSAGE,
                            smtputf8=True)
    assert codes(result) == {"jørgen@partner.test": OK}
    [msg] = sink.messages
    assert "SMTPUTF8" in msg.mail_options
    assert (msg.mail_from, msg.rcpt_tos) == ("søren@brondby.test", ["jørgen@partner.test"])


async def test_a_message_needing_smtputf8_is_refused_without_it(
        transport: SmtpTransport, plain_sink: SmtpSink) -> None:
    result = await send(transport, plain_sink.route, data=UTF8_MESSAGE, smtputf8=True,
                        rcpts=(Rcpt("a@partner.test"), Rcpt("b@partner.test")))
    assert {(r.code, r.status) for r in result.replies.values()} == {(NOT_UTF8, "5.6.7")}
    assert plain_sink.messages == [] and ("MAIL", False) not in plain_sink.commands


async def test_only_utf8_recipients_are_refused_without_smtputf8(
        transport: SmtpTransport, plain_sink: SmtpSink) -> None:
    result = await send(transport, plain_sink.route,
                        rcpts=(Rcpt("a@partner.test"), Rcpt("jørgen@partner.test")))
    assert codes(result) == {"a@partner.test": OK, "jørgen@partner.test": NOT_UTF8}
    assert "SMTPUTF8" not in plain_sink.messages[0].mail_options


async def test_an_ascii_message_flagged_smtputf8_still_goes_without_it(
        transport: SmtpTransport, plain_sink: SmtpSink) -> None:
    result = await send(transport, plain_sink.route, smtputf8=True)
    assert codes(result) == {"lone@partner.test": OK}


# Helpers

@pytest.mark.parametrize(("code", "message", "expected"), [
    (250, "2.0.0 Ok: queued as X", ("2.0.0", "Ok: queued as X")),
    (550, "5.1.1 <a@b>: Recipient address rejected\n5.1.1 unknown",
     ("5.1.1", "<a@b>: Recipient address rejected unknown")),
    (450, "greylisted", ("4.0.0", "greylisted")),
    (550, "4.1.1 status of the wrong class", ("5.0.0", "4.1.1 status of the wrong class")),
])
def test_server_reply_takes_the_enhanced_status_from_the_text(
        code: int, message: str, expected: tuple[str, str]) -> None:
    reply = server_reply(code, message)
    assert (reply.status, reply.text) == expected


@pytest.mark.parametrize(("value", "encoded"), [
    ("rfc822;a@b.test", "rfc822;a@b.test"),
    ("rfc822;a+2Bb@b.test", "rfc822;a+2Bb@b.test"),  # already xtext: kept
    ("id with space=1", "id+20with+20space+3D1"),
    ("a+b", "a+2Bb"),
])
def test_xtext(value: str, encoded: str) -> None:
    assert xtext(value) == encoded


LARGE_HEAD = (b"From: a@x.test\r\nSubject: stor\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
              b"\r\n")
LARGE_BODY = b"".join(b".linje %d \xc3\x86ldre\r\n" % i for i in range(60_000))  # > 1 MiB


def spooled(tmp_path: Path, head: bytes = LARGE_HEAD, body: bytes = LARGE_BODY) -> Spooled:
    path = tmp_path / "large.eml"
    path.write_bytes(head + body)
    result = open_spooled(path)
    assert result is not None
    return result


async def test_a_message_left_on_disk_arrives_byte_for_byte(transport: SmtpTransport,
                                                           tmp_path: Path, hop: Hop) -> None:
    data = spooled(tmp_path).with_head(b"Subject: ny\r\n\r\n")
    async with hop() as sink:
        result = await send(transport, sink.route, data=data)
    assert codes(result) == {"lone@partner.test": OK}
    [msg] = sink.messages
    assert msg.content == b"Subject: ny\r\n\r\n" + LARGE_BODY
    assert "BODY=8BITMIME" in msg.mail_options and f"SIZE={len(data)}" in msg.mail_options


async def test_a_message_left_on_disk_is_converted_for_a_7bit_server(
        transport: SmtpTransport, tmp_path: Path, hop: Hop) -> None:
    async with hop(eightbitmime=False) as sink:
        result = await send(transport, sink.route, data=spooled(tmp_path))
    assert codes(result) == {"lone@partner.test": OK}
    [msg] = sink.messages
    assert msg.content.isascii()
    assert msg.message.get_content().encode() == LARGE_BODY


async def test_a_message_left_on_disk_goes_over_verified_tls(
        transport: SmtpTransport, trusted_ca: trustme.CA, ca_file: Path,
        tmp_path: Path, hop: Hop) -> None:
    data = spooled(tmp_path)
    async with hop(tls=server_tls(trusted_ca, "127.0.0.1")) as sink:
        result = await send(transport, sink.route, verify(ca_file), data=data)
    assert codes(result) == {"lone@partner.test": OK}
    [msg] = sink.messages
    assert msg.tls and msg.content == LARGE_HEAD + LARGE_BODY


async def test_a_spool_file_that_cannot_be_read_stops_the_message_not_the_hop(
        transport: SmtpTransport, tmp_path: Path, hop: Hop) -> None:
    # Our fault, not the next hop's: no "lost connection" reply that sends the message on
    # to the next MX host, and never a final dot after part of the message.
    data = spooled(tmp_path)
    os.truncate(data.path, len(LARGE_HEAD) + len(LARGE_BODY) // 2)
    async with hop() as sink:
        with pytest.raises(SpoolReadError, match="bytes early"):
            await send(transport, sink.route, data=data)
        assert ("RCPT", False) in sink.commands and sink.messages == []
    with pytest.raises(SpoolReadError, match="bytes early"):  # nor read whole, cut short
        await data.read()
    data.path.unlink()
    with pytest.raises(SpoolReadError, match="cannot read"):
        await data.read()
