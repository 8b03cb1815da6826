"""Following one message through the real daemon's log, in text and in JSON.

One tagged mail to six recipients walks every road (tunnel over verified TLS, deferred
and then delivered, refused by the next hop, S/MIME, internal, unsafe), and a client
outside the relay networks is refused. The log must tell each step by queue id with the
same fields in both formats, and never hold the body or a CPR number.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time

import pytest
import trustme

from tests.e2e.test_smime import publish
from tests.support.daemon import Daemon, GatewayConfig
from tests.support.maillog import events
from tests.support.pki import CA
from tests.support.sink import SmtpSink

RELAY_DENIED = 554
CPR = "0101801234"  # a valid CPR number (1 January 1980)
BODY = "Hans har skinnebenssår og CPR 010180-1234."
RECIPIENTS = ["sikkermail@ast.dk", "travl@kl.dk", "afvist@ast.dk", "olelsen@dhl.dk",
              "gildhoej@brondby.dk", "hm@hotmail.dk"]
MESSAGE = ("From: Lene Larsen <lela@brondby.dk>\r\nTo: " + ", ".join(RECIPIENTS) + "\r\n"
           "Subject: aeldreomsorg%% Vedr. Hans\r\nMessage-ID: <log-1@brondby.dk>\r\n"
           "\r\n" + BODY + "\r\n").encode()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def wait_for_log(gateway: Daemon, fmt: str, predicate, within: float = 20) -> None:
    async with asyncio.timeout(within):
        while not predicate(events(gateway.logs(), fmt)):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.1)


def removed(found: list[dict], queue_id: str) -> bool:
    """The message and each DSN it caused are gone: a DSN is a message of its own, whose
    delivery may end after the original's last retry."""
    ids = {queue_id} | {str(e["dsn_id"]) for e in found
                        if e["event"] == "dsn" and e["queue_id"] == queue_id}
    gone = {e["queue_id"] for e in found if e["event"] == "removed"}
    return ids <= gone


def by_recipient(found: list[dict], event: str) -> dict[str, dict]:
    return {e["to"]: e for e in found if e["event"] == event}


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_one_message_can_be_followed_by_queue_id(config: GatewayConfig, daemons, ca: CA,
                                                       fmt: str):
    tls_ca = trustme.CA()
    refusal = f"550 5.7.1 refused: {CPR} is not welcome here"
    async with SmtpSink(tls=server_context(tls_ca), refuse={
            "travl@kl.dk": "451 4.2.1 mailbox busy", "afvist@ast.dk": refusal}) as sink:
        tls_file = config.root / "tls-ca.pem"
        tls_ca.cert_pem.write_to_path(str(tls_file))
        config.sepo_ca_file = str(tls_file)
        config.sepo = ["ast.dk", "kl.dk"]
        config.transport = {"ast.dk": sink.route, "kl.dk": sink.route}
        config.relay_networks = ["127.0.0.1/32"]
        publish(config, ca.issue("olelsen@dhl.dk"), "olelsen")
        gateway = Daemon(config, serve_args=("--log-format", fmt))
        daemons.append(gateway)
        await asyncio.to_thread(gateway.start)

        queue_id = await asyncio.to_thread(gateway.send, "lela@brondby.dk", RECIPIENTS,
                                           MESSAGE)
        await wait_for_log(gateway, fmt, lambda found: any(
            e["event"] == "deferred" for e in found))
        sink.refuse.pop("travl@kl.dk")  # the retry gets through
        await wait_for_log(gateway, fmt, lambda found: removed(found, queue_id))

        with smtplib.SMTP("127.0.0.1", config.smtp_port, source_address=("127.0.0.2", 0),
                          timeout=10) as outsider:
            outsider.ehlo("outside.example")
            outsider.mail("spam@outside.example")
            assert outsider.rcpt("victim@hotmail.dk")[0] == RELAY_DENIED
        await wait_for_log(gateway, fmt, lambda found: any(
            e["event"] == "reject" for e in found))

    log = gateway.logs()
    found = events(log, fmt, queue_id)
    [received] = [e for e in found if e["event"] == "received"]
    assert {k: received[k] for k in ("client", "helo", "from", "size", "message_id",
                                     "tagged", "department", "nrcpt")} == {
        "client": "127.0.0.1", "helo": "exchange.brondby.dk", "from": "lela@brondby.dk",
        "size": len(MESSAGE), "message_id": "<log-1@brondby.dk>", "tagged": True,
        "department": "aeldreomsorg", "nrcpt": 6}

    classes = {e["to"]: e["class"] for e in found if e["event"] == "classified"}
    assert classes == {"sikkermail@ast.dk": "tunnel", "travl@kl.dk": "tunnel",
                       "afvist@ast.dk": "tunnel", "olelsen@dhl.dk": "smime",
                       "gildhoej@brondby.dk": "internal", "hm@hotmail.dk": "unsafe"}
    assert all(e["reason"] for e in found if e["event"] == "classified")

    delivered = by_recipient(found, "delivered")
    assert set(delivered) == {"sikkermail@ast.dk", "travl@kl.dk", "olelsen@dhl.dk",
                              "gildhoej@brondby.dk"}
    tunnel = delivered["sikkermail@ast.dk"]
    assert tunnel["relay"] == sink.address and tunnel["status"] == "2.0.0"
    assert tunnel["tls_version"] in ("TLSv1.2", "TLSv1.3") and tunnel["tls_cipher"]
    assert str(tunnel["reply"]).startswith("250 ")
    assert str(delivered["olelsen@dhl.dk"]["relay"]).startswith(str(config.outbox))
    assert "tls_version" not in delivered["gildhoej@brondby.dk"]  # a file, no TLS

    [deferred] = [e for e in found if e["event"] == "deferred"]
    assert (deferred["to"], deferred["relay"], deferred["reply"], deferred["status"]) == (
        "travl@kl.dk", sink.address, "451 4.2.1 mailbox busy", "4.2.1")
    assert deferred["tls_version"] and deferred["delay"] >= 0

    bounced = by_recipient(found, "bounced")
    assert set(bounced) == {"afvist@ast.dk", "hm@hotmail.dk"}
    assert bounced["afvist@ast.dk"]["reply"] == refusal.replace(CPR, "XXXXXX-XXXX")
    assert bounced["hm@hotmail.dk"]["status"] == "5.7.1"
    assert "relay" not in bounced["hm@hotmail.dk"] and bounced["hm@hotmail.dk"]["reason"]

    [dsn] = [e for e in found if e["event"] == "dsn"]
    assert (dsn["action"], dsn["to"]) == ("failed", "lela@brondby.dk")
    notice = events(log, fmt, str(dsn["dsn_id"]))
    assert [(e["event"], e.get("to"), e.get("class")) for e in notice] == [
        ("delivered", "lela@brondby.dk", "plain"), ("removed", None, None)]
    assert found[-1]["event"] == "removed"

    [reject] = [e for e in events(log, fmt, "NOQUEUE")]
    assert (reject["event"], reject["client"], reject["from"], reject["to"]) == (
        "reject", "127.0.0.2", "spam@outside.example", "victim@hotmail.dk")
    assert str(reject["reply"]).startswith("554 5.7.1")

    for secret in (CPR, "010180-1234", "skinnebenssår", BODY):
        assert secret not in log
    if fmt == "json":  # one object per line, always
        assert all(line.startswith("{") for line in log.splitlines())


def test_text_log_lines_read_like_postfix(config: GatewayConfig, daemons):
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    data = b"Subject: Hej\r\nMessage-ID: <plain-1@brondby.dk>\r\n\r\nHej\r\n"
    queue_id = gateway.send("lela@brondby.dk", ["hm@hotmail.dk"], data)
    deadline = time.monotonic() + 20
    while f"{queue_id}: removed" not in gateway.logs():
        assert time.monotonic() < deadline, gateway.logs()
        time.sleep(0.05)
    lines = [line.split(": ", 1)[1] for line in gateway.logs().splitlines()
             if f": {queue_id}: " in line]
    assert lines[0] == (f"{queue_id}: received client=127.0.0.1 helo=exchange.brondby.dk "
                        f"from=<lela@brondby.dk> size={len(data)} message_id=<plain-1@brondby.dk> "
                        f"tagged=false nrcpt=1")
    assert lines[1].startswith(f"{queue_id}: delivered to=<hm@hotmail.dk> class=plain "
                               f"relay={config.outbox}/{queue_id}.1.eml status=2.0.0 reply=\"250 ")
    assert lines[2] == f"{queue_id}: removed"
    assert len(lines) == 3
