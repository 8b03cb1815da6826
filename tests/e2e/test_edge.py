"""The SMTP edge as Exchange sees it: extensions, relay control, size, smuggling, TLS."""

from __future__ import annotations

import smtplib
import socket
import ssl

import pytest
import trustme

from tests.support.daemon import Daemon, GatewayConfig, start

OK = 250
RELAY_DENIED = 554
TOO_BIG = 552
SMUGGLING_REFUSED = 554
BAD_PARAMETER = 501
MUST_STARTTLS = 530

MESSAGE = b"From: a@brondby.dk\r\nTo: b@hotmail.dk\r\nSubject: hej\r\n\r\nhej\r\n"


def test_ehlo_advertises_extensions(gateway: Daemon):
    with gateway.smtp() as client:
        for ext in ("size", "8bitmime", "smtputf8", "dsn"):
            assert client.has_extn(ext), ext
        assert client.esmtp_features["size"] == "1000000"


def test_relay_denied_outside_relay_networks(config: GatewayConfig, daemons):
    config.relay_networks = ["127.0.0.2/32"]
    gateway = start(config, daemons)
    with gateway.smtp() as client:  # from 127.0.0.1
        client.mail("a@brondby.dk")
        code, reply = client.rcpt("b@hotmail.dk")
        assert code == RELAY_DENIED and b"5.7.1" in reply
    allowed = smtplib.SMTP("127.0.0.1", config.smtp_port, source_address=("127.0.0.2", 0))
    with allowed as client:
        client.ehlo("exchange.brondby.dk")
        client.mail("a@brondby.dk")
        assert client.rcpt("b@hotmail.dk")[0] == OK
    assert gateway.metric("sendsikkert_smtp_rejections_total", reason="relay_denied") == 1


def test_oversize_refused_by_size_and_during_data(gateway: Daemon):
    with gateway.smtp() as client:
        code, _ = client.mail("a@brondby.dk", ["SIZE=2000000"])
        assert code == TOO_BIG
        client.rset()
        client.mail("a@brondby.dk")
        client.rcpt("b@hotmail.dk")
        code, _ = client.data(MESSAGE + (b"x" * 98 + b"\r\n") * 11_000)
        assert code == TOO_BIG
    assert gateway.spooled() == []


@pytest.mark.parametrize("payload", [
    b"Subject: x\r\n\r\nline\nMAIL FROM:<evil@x.dk>\r\n",  # bare LF
    b"Subject: x\r\n\r\nline\r.\rMAIL FROM:<evil@x.dk>\r\n",  # bare CR
    b"Subject: x\r\n\r\nfoo\n.\nRCPT TO:<evil@x.dk>\r\n",
])
def test_bare_line_endings_are_refused(gateway: Daemon, payload: bytes):
    with socket.create_connection(("127.0.0.1", gateway.config.smtp_port), 10) as s:
        f = s.makefile("rb")
        f.readline()
        for command in (b"EHLO x\r\n", b"MAIL FROM:<a@brondby.dk>\r\n",
                        b"RCPT TO:<b@hotmail.dk>\r\n", b"DATA\r\n"):
            s.sendall(command)
            while f.readline()[3:4] == b"-":
                pass
        s.sendall(payload + b".\r\n")
        reply = f.readline()
    assert int(reply[:3]) == SMUGGLING_REFUSED, reply
    assert gateway.spooled() == []
    assert gateway.outbox() == []


def test_dsn_parameters_accepted_and_checked(gateway: Daemon):
    with gateway.smtp() as client:
        assert client.mail("a@brondby.dk", ["RET=HDRS", "ENVID=abc+2Bdef"])[0] == OK
        assert client.rcpt("b@hotmail.dk", ["NOTIFY=FAILURE,DELAY",
                                            "ORCPT=rfc822;b@hotmail.dk"])[0] == OK
        assert client.rcpt("c@hotmail.dk", ["NOTIFY=NEVER,SUCCESS"])[0] == BAD_PARAMETER
        assert client.data(MESSAGE)[0] == OK
    gateway.wait_outbox(1)
    with gateway.smtp() as client:
        assert client.mail("a@brondby.dk", ["RET=BODY"])[0] == BAD_PARAMETER


def test_notify_never_suppresses_the_bounce(gateway: Daemon):
    tagged = b"From: a@brondby.dk\r\nTo: b@hotmail.dk\r\nSubject: aeldreomsorg%% x\r\n\r\nx\r\n"
    gateway.send("a@brondby.dk", ["b@hotmail.dk"], tagged, rcpt_options=("NOTIFY=NEVER",))
    gateway.wait_queue_empty()
    assert gateway.outbox() == []
    assert gateway.metric("sendsikkert_recipients_total",
                          **{"class": "unsafe", "outcome": "bounced"}) == 1


def test_null_sender_and_smtputf8(gateway: Daemon):
    with gateway.smtp() as client:
        assert client.mail("", ["SMTPUTF8"])[0] == OK
        assert client.rcpt("søren@brøndby\u200b.dk")[0] != OK  # not a mailbox
        assert client.rcpt("b@hotmail.dk")[0] == OK
        assert client.data("Subject: æøå\r\n\r\næøå\r\n".encode())[0] == OK
    [out] = gateway.wait_outbox(1)
    assert out.read_bytes().endswith("Subject: æøå\r\n\r\næøå\r\n".encode())


def test_inbound_starttls(config: GatewayConfig, daemons, tmp_path):
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        tmp_path / "smtp.pem")
    config.smtp_tls = f'cert = "{tmp_path / "smtp.pem"}"\nkey = "{tmp_path / "smtp.pem"}"\n' \
                      'require = true'
    gateway = start(config, daemons)
    with gateway.smtp() as client:
        assert client.has_extn("starttls")
        assert client.mail("a@brondby.dk")[0] == MUST_STARTTLS
        context = ssl.create_default_context()
        ca.configure_trust(context)
        client.starttls(context=context)
        client.ehlo("exchange.brondby.dk")
        assert client.mail("a@brondby.dk")[0] == OK
        assert client.rcpt("b@hotmail.dk")[0] == OK
        assert client.data(MESSAGE)[0] == OK
    gateway.wait_outbox(1)
