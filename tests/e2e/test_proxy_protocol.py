"""Behind a load balancer: HAProxy sends the PROXY header, the daemon relays by the client.

A real HAProxy (send-proxy-v2 and send-proxy, i.e. v1) connects to the daemon from
127.0.0.9, the only trusted proxy; clients connect to HAProxy from 127.0.0.5 (in
relay_networks) or 127.0.0.6 (not). Direct connections check the contract's other two
rules: a trusted proxy without a header is closed, anyone else's PROXY line is ignored.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support import haproxy, proxyheader
from tests.support.daemon import Daemon, GatewayConfig
from tests.support.haproxy import HAProxy
from tests.support.waiting import until

OK = 250
RELAY_DENIED = 554
UNKNOWN_COMMAND = 500

BALANCER = "127.0.0.9"
ALLOWED = "127.0.0.5"
STRANGER = "127.0.0.6"
MESSAGE = b"From: a@brondby.dk\r\nTo: b@hotmail.dk\r\nSubject: hej\r\n\r\nhej\r\n"


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def proxied(config: GatewayConfig, daemons: list[Daemon], tls_ca: trustme.CA) -> Daemon:
    config.relay_networks = [f"{ALLOWED}/32"]
    config.smtp_extra = f'proxy_protocol = true\ntrusted_proxies = ["{BALANCER}/32"]'
    certificate = config.root / "smtp.pem"
    tls_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(certificate)
    config.smtp_tls = f'cert = "{certificate}"\nkey = "{certificate}"'
    daemon = Daemon(config)
    daemons.append(daemon)
    return daemon.start()


@pytest.fixture(params=["send-proxy-v2", "send-proxy"])
def balancer(request, proxied: Daemon, tmp_path: Path) -> Iterator[HAProxy]:
    if not haproxy.available():
        pytest.fail("haproxy is missing: run scripts/setup --test")
    proxy = HAProxy(tmp_path / "haproxy", [("127.0.0.1", proxied.config.smtp_port)],
                    send_proxy=request.param, source=BALANCER).start()
    yield proxy
    proxy.stop()


def send_through(port: int, source: str, tls: trustme.CA | None = None) -> tuple[int, bytes]:
    """MAIL, RCPT and (if RCPT is accepted) DATA from `source`; RCPT's reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0)) as client:
        client.ehlo("exchange.brondby.dk")
        if tls is not None:
            context = ssl.create_default_context()
            tls.configure_trust(context)
            client.starttls(context=context)
            client.ehlo("exchange.brondby.dk")
        client.mail("a@brondby.dk")
        code, reply = client.rcpt("b@hotmail.dk")
        if code == OK:
            assert client.data(MESSAGE)[0] == OK
        return code, reply


def test_the_client_behind_the_balancer_decides_relaying(proxied: Daemon, balancer: HAProxy):
    assert send_through(balancer.port, ALLOWED)[0] == OK
    [delivered] = proxied.wait_outbox(1)
    assert b"X-Envelope-To: b@hotmail.dk" in delivered.read_bytes()
    code, reply = send_through(balancer.port, STRANGER)
    assert code == RELAY_DENIED and b"5.7.1" in reply
    logs = proxied.logs()
    # The log names the real clients, never the balancer (nor its health checks).
    assert ALLOWED in logs and STRANGER in logs and BALANCER not in logs


def test_the_client_stays_itself_through_starttls(proxied: Daemon, balancer: HAProxy,
                                                  tls_ca: trustme.CA):
    """TLS runs end to end through the balancer; the session after STARTTLS is a new one."""
    assert send_through(balancer.port, ALLOWED, tls=tls_ca)[0] == OK
    assert send_through(balancer.port, STRANGER, tls=tls_ca)[0] == RELAY_DENIED
    proxied.wait_outbox(1)


def test_a_trusted_proxy_without_a_header_is_closed(proxied: Daemon):
    before = proxied.metric("sendsikkert_smtp_rejections_total", reason="proxy_header")
    with socket.create_connection(("127.0.0.1", proxied.config.smtp_port), 10,
                                  source_address=(BALANCER, 0)) as s:
        s.sendall(b"EHLO exchange.brondby.dk\r\n")
        assert s.recv(1024) == b""  # closed, not even a banner
    # Counted, then logged: the line is written at the end of the worker's loop turn, which
    # may come after the close the client saw.
    until(lambda: f"closed connection from proxy ('{BALANCER}'" in proxied.logs(),
          lambda: proxied.logs()[-3000:])
    assert proxied.metric("sendsikkert_smtp_rejections_total",
                          reason="proxy_header") == before + 1


def dialogue(port: int, source: str, lines: list[bytes]) -> list[int]:
    """The banner's code, then the reply code to each line, sent one after the other."""
    with socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0)) as s:
        replies = s.makefile("rb")

        def reply() -> int:
            while (line := replies.readline())[3:4] == b"-":
                pass
            return int(line[:3])

        codes = [reply()]
        for line in lines:
            s.sendall(line)
            codes.append(reply())
        return codes


def test_a_proxy_line_from_anyone_else_is_never_honoured(proxied: Daemon):
    port = proxied.config.smtp_port
    transaction = [b"EHLO x\r\n", b"MAIL FROM:<a@brondby.dk>\r\n", b"RCPT TO:<b@hotmail.dk>\r\n"]
    # A stranger claiming to be an allowed client gets nowhere...
    assert dialogue(port, STRANGER, [proxyheader.v1(ALLOWED), *transaction]) == [
        220, UNKNOWN_COMMAND, OK, OK, RELAY_DENIED]
    # ...and an allowed client's own address counts, whatever its PROXY line says.
    assert dialogue(port, ALLOWED, [proxyheader.v1(STRANGER), *transaction]) == [
        220, UNKNOWN_COMMAND, OK, OK, OK]
