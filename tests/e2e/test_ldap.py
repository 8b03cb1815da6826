"""The LDAP certificate directory under the real daemon, against a real OpenLDAP slapd.

While the directory is down, tagged mail to a would-be S/MIME recipient stays queued
(`unknown`), `check` exits 75 and /readyz says why; once slapd is back, the queued mail
goes out without anyone acting.
"""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, GatewayConfig
from tests.support.pki import CA
from tests.support.slapd import Slapd

TEMPFAIL = 75
TAGGED = (b"From: Lene Larsen <lela@brondby.dk>\r\nTo: olelsen@dhl.dk\r\n"
          b"Subject: aeldreomsorg%% Vedr. din mor\r\n\r\nFortroligt\r\n")


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    server = Slapd(tmp_path / "slapd")
    server.start()
    try:
        yield server
    finally:
        server.close()


def ldap_config(config: GatewayConfig, slapd: Slapd) -> None:
    config.directory = f"""[directory]
backend = "ldap"
url = "{slapd.url}"
base_dn = "c=DK"
filter = "(mail={{address}})"
attributes = ["userCertificate;binary", "userSMIMECertificate;binary"]
trust_anchors = ["{config.certs / 'trust'}/*.pem"]
cache_ttl = 0
negative_cache_ttl = 0
# Stopped, slapd refuses at once; running, it must never seem down on loaded cores.
timeout = 10
"""


def wait(predicate, within: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(what)


def test_directory_down_defers_then_delivers(config: GatewayConfig, daemons, ca: CA, slapd):
    ole = ca.issue("olelsen@dhl.dk")
    slapd.add_entry("cn=Ole Elsen,o=DHL,c=DK", "olelsen@dhl.dk", [ole.der])
    slapd.add_entry("cn=Intet Cert,o=DHL,c=DK", "ingen@dhl.dk", [])
    ldap_config(config, slapd)
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()

    found = gateway.cli("check", "olelsen@dhl.dk", "ingen@dhl.dk")
    assert found.returncode == 1  # ingen@ has no certificate: unsafe
    assert "olelsen@dhl.dk\tsmime" in found.stdout and "ingen@dhl.dk\tunsafe" in found.stdout
    assert gateway.http("/readyz")[0] == 200

    slapd.stop()
    down = gateway.cli("check", "olelsen@dhl.dk")
    assert down.returncode == TEMPFAIL and "unknown" in down.stdout
    status, ready = gateway.http("/readyz")
    assert status == 503 and "directory" in " ".join(ready["reasons"])

    gateway.send("lela@brondby.dk", ["olelsen@dhl.dk"], TAGGED)
    wait(lambda: gateway.metric("sendsikkert_recipients_total",
                                **{"class": "unknown", "outcome": "deferred"}) >= 2,
         what="the recipient was not deferred twice:\n" + gateway.logs()[-3000:])
    assert gateway.outbox() == []  # neither delivered nor bounced while unknown
    assert gateway.metric("sendsikkert_directory_errors_total", backend="ldap") >= 2

    slapd.start()
    [out] = gateway.wait_outbox(1, timeout=30)
    msg = email.message_from_bytes(out.read_bytes(), policy=email.policy.default)
    assert msg.get_content_type() == "application/pkcs7-mime"
    assert msg["X-Envelope-To"] == "olelsen@dhl.dk"
    gateway.wait_queue_empty()
    assert gateway.http("/readyz")[0] == 200


def test_filter_injection_never_matches_other_entries(config: GatewayConfig, daemons, ca: CA,
                                                      slapd):
    ole = ca.issue("olelsen@dhl.dk")
    slapd.add_entry("cn=Ole Elsen,o=DHL,c=DK", "olelsen@dhl.dk", [ole.der])
    ldap_config(config, slapd)
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    for attempt in ("*)(mail=*", "olelsen@dhl.dk)(|(mail=*", "*"):
        status, _ = gateway.http(f"/api/check?address={attempt}")
        assert status == 400, attempt
        assert gateway.cli("check", attempt).returncode == 2
    # Valid addresses that contain filter characters are escaped, and find nothing.
    status, answer = gateway.http("/api/check?address=*@dhl.dk&address=ole*@dhl.dk"
                                  "&address=olelsen@dhl.dk")
    assert status == 200
    assert [r["class"] for r in answer["results"]] == ["unsafe", "unsafe", "smime"]
