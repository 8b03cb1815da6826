"""The edge against hostile clients (issue 8): NUL, unchecked senders, routing tricks,
SMTPUTF8 mailboxes, STARTTLS hygiene, connection limits and the idle timeout."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import trustme

from tests.support.daemon import Daemon, GatewayConfig, start
from tests.support.rawsmtp import RawSmtp

OK = 250
READY = 220
CLOSING = 421
BAD_SEQUENCE = 503
NOT_IMPLEMENTED = 502
BAD_MAILBOX = 553
REFUSED = 554

MESSAGE = b"From: a@brondby.dk\r\nTo: b@hotmail.dk\r\nSubject: hej\r\n\r\nhej\r\n"


def session(gateway: Daemon) -> RawSmtp:
    s = RawSmtp(gateway.config.smtp_port)
    assert s.command(b"EHLO exchange.brondby.dk")[0] == OK
    return s


@pytest.mark.parametrize("payload", [
    b"Subject: x\r\n\r\nline\r\n\x00.\r\nMAIL FROM:<evil@x.dk>\r\n",  # NUL before the dot
    b"Subject: x\x00y\r\n\r\nbody\r\n",
    b"Subject: x\r\n\r\nbody\x00\r\n",
])
def test_nul_in_data_is_refused(gateway: Daemon, payload: bytes):
    with session(gateway) as s:
        s.command(b"MAIL FROM:<a@brondby.dk>")
        s.command(b"RCPT TO:<b@hotmail.dk>")
        code, text = s.data(payload)
    assert code == REFUSED and b"5.6.0" in text[0], text
    assert gateway.spooled() == []


@pytest.mark.parametrize("sender", [
    b"<a\x00b@brondby.dk>", b"<" + b"a" * 490 + b"@brondby.dk>", b'<"x>"@brondby.dk>',
    b"<hm%hotmail.dk@brondby.dk>", b"<hotmail.dk!hm@brondby.dk>", b"<@relay.dk:a@brondby.dk>",
    b"<a@brondby..dk>", b"<a\r@brondby.dk>", "<søren@brøndby.dk>".encode(),
])
def test_mail_from_is_validated_like_recipients(gateway: Daemon, sender: bytes):
    with session(gateway) as s:
        code, text = s.command(b"MAIL FROM:" + sender)
        assert code in (BAD_MAILBOX, 500, 501), (code, text)  # 500/501: too long for a line
        if code == BAD_MAILBOX:
            assert text[0].startswith((b"5.1.7", b"5.6.7")), text
        assert s.command(b"MAIL FROM:<>")[0] == OK  # the null sender stays allowed


@pytest.mark.parametrize("recipient", [
    b"<hm%hotmail.dk@brondby.dk>", b"<hotmail.dk!hm@brondby.dk>", b"<hm%hotmail.dk@ast.dk>",
    b'<"hm@hotmail.dk"@brondby.dk>', b"<@brondby.dk:hm@hotmail.dk>",
    b"<@a.dk,@b.dk:hm@brondby.dk>",
])
def test_routing_tricks_are_refused_at_rcpt(gateway: Daemon, recipient: bytes):
    with session(gateway) as s:
        assert s.command(b"MAIL FROM:<a@brondby.dk>")[0] == OK
        code, text = s.command(b"RCPT TO:" + recipient)
    assert code == BAD_MAILBOX and text[0].startswith(b"5.1.3"), (code, text)


def test_utf8_mailboxes_with_smtputf8(gateway: Daemon):
    with session(gateway) as s:
        assert s.command("MAIL FROM:<søren@brøndby.dk> SMTPUTF8".encode())[0] == OK
        assert s.command("RCPT TO:<jens@ærø.dk>".encode())[0] == OK
        code, _ = s.data("From: søren@brøndby.dk\r\nSubject: æ\r\n\r\nhej\r\n".encode())
        assert code == OK
        assert s.command(b"MAIL FROM:<a@brondby.dk>")[0] == OK  # without SMTPUTF8
        code, text = s.command("RCPT TO:<jens@ærø.dk>".encode())
        assert code == BAD_MAILBOX and text[0].startswith(b"5.6.7"), text
    [out] = gateway.wait_outbox(1)
    head = out.read_bytes().split(b"\r\n\r\n")[0].decode()
    assert "X-Envelope-From: <søren@brøndby.dk>" in head and "X-Envelope-To: jens@ærø.dk" in head


@pytest.fixture
def tls_gateway(config: GatewayConfig, daemons, tmp_path) -> tuple[Daemon, ssl.SSLContext]:
    ca = trustme.CA()
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(tmp_path / "s.pem")
    config.smtp_tls = f'cert = "{tmp_path / "s.pem"}"\nkey = "{tmp_path / "s.pem"}"'
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return start(config, daemons), context


def test_starttls_offers_no_auth_and_refuses_a_second_starttls(tls_gateway):
    gateway, context = tls_gateway
    with session(gateway) as s:
        assert s.command(b"STARTTLS")[0] == READY
        s.starttls(context)
        code, lines = s.command(b"EHLO exchange.brondby.dk")
        assert code == OK and not [x for x in lines if x.upper().startswith(b"AUTH")], lines
        assert b"STARTTLS" not in lines
        assert s.command(b"AUTH PLAIN AGJvYgBzZWNyZXQ=")[0] == NOT_IMPLEMENTED
        code, text = s.command(b"STARTTLS")
        assert code == BAD_SEQUENCE, text
        assert s.command(b"MAIL FROM:<a@brondby.dk>")[0] == OK  # the session goes on


def test_failed_handshakes_are_one_log_line_each(tls_gateway):
    gateway, _ = tls_gateway
    before = len(gateway.logs().splitlines())
    for junk in (b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.0\r\n\r\n", b""):
        with session(gateway) as s:
            assert s.command(b"STARTTLS")[0] == READY
            s.sock.sendall(junk)
            s.sock.shutdown(socket.SHUT_WR)
            assert s.reply()[0] == 0  # closed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = gateway.logs().splitlines()[before:]
        failures = [line for line in new if "TLS handshake" in line]
        if len(failures) >= 3:
            break
        time.sleep(0.1)
    time.sleep(0.3)  # anything more the failures might log
    new = gateway.logs().splitlines()[before:]
    failures = [line for line in new if "TLS handshake" in line]
    assert len(failures) == 3 and len(new) <= 6 and "Traceback" not in "\n".join(new), new


def test_connection_limits(config: GatewayConfig, daemons):
    config.smtp_extra = "max_connections = 3\nmax_connections_per_client = 2"
    start(config, daemons)
    for _ in range(3):  # a health check's connect-and-close gives its place back
        socket.create_connection(("127.0.0.1", config.smtp_port), 1).close()
    deadline = time.monotonic() + 10
    while True:  # once the daemon has seen the closes
        first = [RawSmtp(config.smtp_port), RawSmtp(config.smtp_port)]
        if first[1].greeting[0] == READY or time.monotonic() > deadline:
            break
        for s in first:
            s.close()
        time.sleep(0.1)
    assert all(s.greeting[0] == READY for s in first)
    with RawSmtp(config.smtp_port) as third:
        assert third.greeting[0] == CLOSING and third.greeting[1][0].startswith(b"4.7.0")
        assert third.reply() == (0, [])  # and closed
    other = RawSmtp(config.smtp_port, source="127.0.0.2")
    assert other.greeting[0] == READY
    with RawSmtp(config.smtp_port, source="127.0.0.3") as fourth:
        assert fourth.greeting[0] == CLOSING
    for s in first:
        s.close()
    deadline = time.monotonic() + 10
    while True:  # a slot comes free once the daemon has seen the close
        with RawSmtp(config.smtp_port) as again:
            if again.greeting[0] == READY or time.monotonic() > deadline:
                break
        time.sleep(0.1)
    assert again.greeting[0] == READY
    other.close()


@pytest.mark.serial
def test_idle_sessions_get_421_and_are_closed(config: GatewayConfig, daemons):
    config.smtp_extra = "timeout = 1"
    gateway = start(config, daemons)
    with session(gateway) as s:
        s.command(b"MAIL FROM:<a@brondby.dk>")
        s.command(b"RCPT TO:<b@hotmail.dk>")
        assert s.command(b"DATA")[0] == 354
        for _ in range(4):  # a slow DATA that keeps sending is not idle
            s.sock.sendall(b"X-Slow: yes\r\n")
            time.sleep(0.4)
        s.sock.sendall(b"\r\nbody\r\n.\r\n")
        assert s.reply()[0] == OK
        started = time.monotonic()
        code, text = s.reply()
        assert code == CLOSING and text[0].startswith(b"4.4.2"), text
        assert 0.8 < time.monotonic() - started < 10
        assert s.reply() == (0, [])
