"""What the content of a message can do to the gateway (issue 8): header injection through
the subject rewrite, Bcc, nesting past the limits, 8-bit and UTF-8 mail for next hops
without 8BITMIME or SMTPUTF8."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import time

from tests.e2e.test_smime import publish
from tests.support.daemon import Daemon, GatewayConfig
from tests.support.pki import CA
from tests.support.rawsmtp import RawSmtp
from tests.support.sink import SmtpSink


def headers_of(path) -> list[bytes]:
    head = path.read_bytes().split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n") if line[:1] not in b" \t"]


def test_subject_rewrite_cannot_inject_header_fields(gateway: Daemon):
    data = (b"From: a@brondby.dk\r\nTo: b@brondby.dk\r\n"
            b"Subject: =?utf-8?q?SV:_aeldreomsorg=25=25=0D=0ABcc:_evil=40hotmail.dk?=\r\n"
            b"\r\nbody\r\n")
    gateway.send("a@brondby.dk", ["b@brondby.dk"], data)
    [out] = gateway.wait_outbox(1)
    raw = out.read_bytes()
    assert headers_of(out) == [b"X-Envelope-From", b"X-Envelope-To", b"From", b"To",
                               b"Subject"], raw
    assert b"\n" not in raw.replace(b"\r\n", b"")  # no bare LF on the file route either
    subject = email.message_from_bytes(raw, policy=email.policy.default)["Subject"]
    assert "%%" not in subject and "evil@hotmail.dk" in subject


def test_no_copy_carries_bcc(gateway: Daemon):
    for subject in (b"aeldreomsorg%% hej", b"hej"):  # tagged (internal route) and plain
        data = (b"From: a@brondby.dk\r\nTo: b@brondby.dk\r\nBcc: skjult@brondby.dk\r\n"
                b"Subject: " + subject + b"\r\n\r\nbody\r\n")
        gateway.send("a@brondby.dk", ["b@brondby.dk", "skjult@brondby.dk"], data)
    files = gateway.wait_outbox(2)
    for out in files:
        assert b"Bcc" not in headers_of(out)
        head = out.read_bytes().split(b"\r\n\r\n", 1)[0]
        # the hidden recipient shows only in the file route's own envelope lines
        assert b"skjult" not in head.replace(b"X-Envelope-To: skjult@brondby.dk", b"")


def nested(depth: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\nHun har skinnebenss\xc3\xa5r.\r\n"
    for i in range(depth):
        body = (f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
                + body + f"\r\n--b{i}--\r\n".encode())
    return (b"From: lela@brondby.dk\r\nTo: olelsen@dhl.dk\r\n"
            b"Subject: aeldreomsorg%% Vedr. din mor\r\nMIME-Version: 1.0\r\n" + body)


def test_nesting_past_the_limit_bounces_at_once(config: GatewayConfig, daemons, ca: CA):
    publish(config, ca.issue("olelsen@dhl.dk"), "ole")
    config.retry_min = config.retry_max = 3600  # a deferral would sit here for an hour
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    started = time.monotonic()
    gateway.send("lela@brondby.dk", ["olelsen@dhl.dk"], nested(1000))
    [dsn] = gateway.wait_outbox(1, timeout=60)
    gateway.wait_queue_empty()
    assert time.monotonic() - started < 60  # a deferral would have waited an hour
    report = email.message_from_bytes(dsn.read_bytes(), policy=email.policy.default)
    fields = report.get_payload()[1].get_payload()[1]
    assert (fields["Action"], fields["Status"]) == ("failed", "5.6.0")
    assert "nested more than 100" in fields["Diagnostic-Code"]
    assert "RecursionError" not in gateway.logs()
    gateway.send("lela@brondby.dk", ["olelsen@dhl.dk"], nested(20))  # within the limit
    [encrypted] = [f for f in gateway.wait_outbox(2) if f != dsn]
    assert b"application/pkcs7-mime" in encrypted.read_bytes()


def report_of(path) -> tuple[email.message.EmailMessage, bytes]:
    raw = path.read_bytes()
    return email.message_from_bytes(raw, policy=email.policy.default), raw


async def test_8bit_mail_is_converted_for_a_7bit_next_hop(config: GatewayConfig, daemons):
    async with SmtpSink(eightbitmime=False) as sink:
        config.default_route = sink.route
        gateway = Daemon(config)
        daemons.append(gateway)
        await asyncio.to_thread(gateway.start)
        text = ("From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
                "\r\nKære Ole, hun har skinnebenssår.\r\n").encode()
        await asyncio.to_thread(gateway.send, "a@brondby.dk", ["x@hotmail.dk"], text)
        signed = (b'From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: s\r\nMIME-Version: 1.0\r\n'
                  b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
                  b'micalg=sha-256; boundary="s"\r\n\r\n--s\r\nContent-Type: text/plain; '
                  b"charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                  + "Ærø\r\n".encode() + b"--s\r\nContent-Type: application/pkcs7-signature"
                  b"\r\n\r\nAAAA\r\n--s--\r\n")
        await asyncio.to_thread(gateway.send, "a@brondby.dk", ["x@hotmail.dk"], signed)
        [msg] = await sink.wait_for(1, within=15)
        [dsn] = await asyncio.to_thread(gateway.wait_outbox, 1)
    assert msg.content.isascii() and not any(o.startswith("BODY=") for o in msg.mail_options)
    assert msg.message.get_content() == "Kære Ole, hun har skinnebenssår.\r\n"
    report, raw = report_of(dsn)
    fields = report.get_payload()[1].get_payload()[1]
    assert (fields["Action"], fields["Status"]) == ("failed", "5.6.3")
    assert "signatur" in report.get_payload()[0].get_content()
    assert "Ærø".encode() not in raw  # the signed body is not sent back


async def test_utf8_recipient_via_a_hop_without_smtputf8_bounces_clearly(
        config: GatewayConfig, daemons):
    async with SmtpSink(smtputf8=False) as sink:
        config.default_route = sink.route
        gateway = Daemon(config)
        daemons.append(gateway)
        await asyncio.to_thread(gateway.start)
        with RawSmtp(config.smtp_port) as s:
            s.command(b"EHLO exchange.brondby.dk")
            assert s.command(b"MAIL FROM:<a@brondby.dk> SMTPUTF8")[0] == 250
            assert s.command("RCPT TO:<jørgen@ærø.dk>".encode())[0] == 250
            assert s.data(b"From: a@brondby.dk\r\nSubject: s\r\n\r\nbody\r\n")[0] == 250
        [dsn] = await asyncio.to_thread(gateway.wait_outbox, 1)
    assert sink.messages == []
    report, raw = report_of(dsn)
    assert report.get_payload()[1].get_content_type() == "message/global-delivery-status"
    assert "Final-Recipient: utf-8; jørgen@ærø.dk\r\n".encode() in raw
    assert b"Status: 5.6.7" in raw
    assert "internationale mailadresser" in report.get_payload()[0].get_content()
