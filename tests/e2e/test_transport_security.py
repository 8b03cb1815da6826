"""DANE and MTA-STS through the real daemon (CONTRACT "DANE and MTA-STS").

The world around the gateway runs in this test's process: a DNS server playing a
validating resolver (AD only for the signed zone dane.test), SMTP servers on 127.0.0.2,
127.0.0.3 and 127.0.0.4 sharing one port (`routes.mx_port`), and HTTPS policy hosts on
127.0.0.5 (trusted certificate) and 127.0.0.6 (untrusted) sharing another
(`transport_security.policy_port`). `routes.default = "mx"` and `dns.nameservers` point
the daemon at them.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from tests.support.daemon import Daemon, GatewayConfig
from tests.support.dns import DnsServer
from tests.support.pki import CA, NOW
from tests.support.policyhost import PolicyHost, policy
from tests.support.sink import SmtpSink, server_tls

EE_HOST, TA_HOST, STS_HOST, WEB, BAD_WEB = (
    "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")
EXIT_UNSAFE, EXIT_TEMPFAIL = 1, 75
SENDER = "lela@brondby.dk"


def tagged(*to: str) -> bytes:
    return (f"From: Lene Larsen <{SENDER}>\r\nTo: {', '.join(to)}\r\n"
            "Subject: aeldreomsorg%% Vedr. din mor\r\nMessage-ID: <ts@brondby.dk>\r\n\r\n"
            "Fortrolig tekst\r\n").encode()


PLAIN = b"From: a@brondby.dk\r\nTo: w@bad.dane.test\r\nSubject: hej\r\n\r\nalmindelig\r\n"


def spki_sha256(cert: Any) -> bytes:
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


@dataclass
class World:
    dns: DnsServer
    ee: SmtpSink  # DANE-EE: an untrusted, expired certificate for another name
    ta: SmtpSink  # DANE-TA: a chain to the CA its TLSA record names
    sts: SmtpSink  # MTA-STS: a certificate for its MX name from the trusted web CA
    web: PolicyHost
    bad_web: PolicyHost

    def received(self) -> dict[str, list[str]]:
        """Recipient -> the hosts that got a message for it."""
        got: dict[str, list[str]] = {}
        for name, sink in (("ee", self.ee), ("ta", self.ta), ("sts", self.sts)):
            for m in sink.messages:
                for r in m.rcpt_tos:
                    got.setdefault(r, []).append(name)
        return got


@pytest.fixture(scope="module")
def web_ca() -> trustme.CA:
    return trustme.CA()


def zone(port: int, ee_digest: bytes, ta_digest: bytes, other_digest: bytes) -> dict:
    def tlsa(host: str, *records: Any) -> tuple[str, dict]:
        return f"_{port}._tcp.{host}", {"TLSA": list(records)}

    z: dict[str, Any] = {
        "dane.test": {"MX": [(10, "mx1.dane.test")]},
        "mx1.dane.test": {"A": [EE_HOST]},
        "ta.dane.test": {"MX": [(10, "mx2.ta.dane.test")]},
        "mx2.ta.dane.test": {"A": [TA_HOST]},
        "bad.dane.test": {"MX": [(10, "mx.bad.dane.test")]},
        "mx.bad.dane.test": {"A": [EE_HOST]},
        "unsigned.test": {"MX": [(10, "mx.unsigned.test")]},
        "mx.unsigned.test": {"A": [EE_HOST]},
        "servfail.test": "SERVFAIL",
        # MTA-STS: the preferred MX is not in the policy and must never be used.
        "sts.test": {"MX": [(5, "mx.evil.test"), (10, "mx.sts.test")]},
        "mx.evil.test": {"A": [EE_HOST]},
        "mx.sts.test": {"A": [STS_HOST]},
    }
    z.update([tlsa("mx1.dane.test", (3, 1, 1, ee_digest)),
              tlsa("mx2.ta.dane.test", (2, 0, 1, ta_digest)),
              tlsa("mx.bad.dane.test", (3, 1, 1, other_digest)),
              tlsa("mx.unsigned.test", (3, 1, 1, ee_digest))])
    for domain, web in (("sts.test", WEB), ("testing.test", WEB), ("none.test", WEB),
                        ("changing.test", WEB), ("badcert.test", BAD_WEB)):
        z[f"_mta-sts.{domain}"] = {"TXT": ["v=STSv1; id=1;"]}
        z[f"mta-sts.{domain}"] = {"A": [web]}
        z.setdefault(domain, {"MX": [(10, "mx.sts.test")]})
    return z


@asynccontextmanager
async def world(web_ca: trustme.CA) -> AsyncIterator[World]:
    issuing = CA("DANE-TA issuing CA", parent=CA("DANE-TA root"))
    ta_leaf = issuing.issue(common_name="mx2.ta.dane.test", dns_names=["mx2.ta.dane.test"],
                            server=True)
    stale = CA("nobody trusts this CA").issue(
        common_name="localhost", dns_names=["localhost"], server=True, ec_key=True,
        not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=10))
    other = CA("another").issue(common_name="x", server=True, ec_key=True)
    ta_digest = hashlib.sha256(issuing.cert.public_bytes(serialization.Encoding.DER)).digest()
    web_names = [f"mta-sts.{d}" for d in ("sts.test", "testing.test", "none.test",
                                           "changing.test")]
    async with SmtpSink(host=EE_HOST, tls=stale.server_context()) as ee, \
            SmtpSink(host=TA_HOST, port=ee.port, tls=ta_leaf.server_context()) as ta, \
            SmtpSink(host=STS_HOST, port=ee.port,
                     tls=server_tls(web_ca, "mx.sts.test")) as sts, \
            PolicyHost(host=WEB, tls=server_tls(web_ca, *web_names)) as web, \
            PolicyHost(host=BAD_WEB, port=web.port,
                       tls=server_tls(trustme.CA(), "mta-sts.badcert.test")) as bad_web:
        web.policies.update({"sts.test": policy("enforce", "mx.sts.test"),
                             "changing.test": policy("enforce", "*.sts.test"),
                             "testing.test": policy("testing", "mx.sts.test"),
                             "none.test": policy("none")})
        bad_web.policies["badcert.test"] = policy("enforce", "mx.sts.test")
        records = zone(ee.port, spki_sha256(stale.cert), ta_digest, spki_sha256(other.cert))
        with DnsServer(records, signed={"dane.test"}, ttl=1) as dns:
            yield World(dns, ee, ta, sts, web, bad_web)


def configure(config: GatewayConfig, w: World, web_ca: trustme.CA, *, dane: bool = True,
              mta_sts: bool = True) -> None:
    ca_file = config.root / "web-ca.pem"
    web_ca.cert_pem.write_to_path(str(ca_file))
    config.default_route = "mx"
    config.mx_port = w.ee.port
    config.nameservers = [w.dns.address]
    config.extra = (f"[transport_security]\ndane = {str(dane).lower()}\n"
                    f"mta_sts = {str(mta_sts).lower()}\nca_file = \"{ca_file}\"\n"
                    f"policy_port = {w.web.port}\n")


async def start(config: GatewayConfig, daemons: list[Daemon]) -> Daemon:
    daemon = Daemon(config)
    daemons.append(daemon)
    return await asyncio.to_thread(daemon.start)


async def check(gateway: Daemon, *addresses: str) -> tuple[int, dict[str, dict]]:
    done = await asyncio.to_thread(gateway.cli, "check", "--json", *addresses)
    results = json.loads(done.stdout)["results"]
    return done.returncode, {r["address"]: r for r in results}


async def wait_for(predicate, within: float = 20) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - the state lives in another process
            await asyncio.sleep(0.05)


def queue(gateway: Daemon) -> dict[str, dict]:
    listing = json.loads(gateway.cli("queue", "list", "--json", check=True).stdout)
    return {r["address"]: r for m in listing["messages"] for r in m["recipients"]}


async def test_dane_and_mta_sts_turn_red_recipients_green(config, daemons, web_ca, ca):
    ole = ca.issue("ole@dane.test")  # has a certificate: S/MIME still wins
    (config.certs / "directory" / "ole.pem").write_bytes(ole.pem)
    async with world(web_ca) as w:
        configure(config, w, web_ca)
        gateway = await start(config, daemons)
        addresses = ["x@dane.test", "y@ta.dane.test", "z@sts.test", "ole@dane.test",
                     "u@unsigned.test", "t@testing.test", "n@none.test", "s@servfail.test",
                     "b@badcert.test"]
        status, got = await check(gateway, *addresses)
        _, api = await asyncio.to_thread(
            gateway.http, "/api/check?" + "&".join(f"address={a}" for a in addresses))
        assert status == EXIT_UNSAFE
        assert {a: r["class"] for a, r in got.items()} == {
            "x@dane.test": "tunnel", "y@ta.dane.test": "tunnel", "z@sts.test": "tunnel",
            "ole@dane.test": "smime", "u@unsigned.test": "unsafe", "t@testing.test": "unsafe",
            "n@none.test": "unsafe", "s@servfail.test": "unknown", "b@badcert.test": "unknown"}
        assert {r["address"]: r for r in api["results"]} == got  # the API says the same
        assert got["x@dane.test"]["colour"] == "grøn"
        assert got["x@dane.test"]["label"] == "Tunnelkryptering"
        assert got["x@dane.test"]["mechanism"] == "dane"
        assert "DANE" in got["x@dane.test"]["reason"]
        assert "mx1.dane.test" in got["x@dane.test"]["reason"]
        assert got["z@sts.test"]["mechanism"] == "mta_sts"
        assert "MTA-STS" in got["z@sts.test"]["reason"]
        assert "mx.sts.test" in got["z@sts.test"]["reason"]
        assert "mx.evil.test" not in got["z@sts.test"]["reason"]
        assert "not DNSSEC-signed" in got["u@unsigned.test"]["reason"]
        assert "testing mode" in got["t@testing.test"]["reason"]
        assert "certificate" in got["b@badcert.test"]["reason"]

        await asyncio.to_thread(gateway.send, SENDER,
                                ["x@dane.test", "y@ta.dane.test", "z@sts.test",
                                 "ole@dane.test"],
                                tagged("x@dane.test", "y@ta.dane.test", "z@sts.test",
                                       "ole@dane.test"))
        await wait_for(lambda: len(w.ee.messages) + len(w.ta.messages)
                       + len(w.sts.messages) >= 4)
        await asyncio.to_thread(gateway.wait_queue_empty)
        assert w.received() == {"x@dane.test": ["ee"], "ole@dane.test": ["ee"],
                                "y@ta.dane.test": ["ta"], "z@sts.test": ["sts"]}
        for m in w.ee.messages + w.ta.messages + w.sts.messages:
            assert m.tls and m.tls_version in ("TLSv1.2", "TLSv1.3")
            parsed = email.message_from_bytes(m.content, policy=email.policy.default)
            assert "X-Send-Sikkert" not in parsed and "%%" not in parsed["Subject"]
            if m.rcpt_tos == ["ole@dane.test"]:
                assert parsed.get_content_type() == "application/pkcs7-mime"
            else:
                assert b"Fortrolig tekst" in m.content  # a tunnel: TLS protects it
        assert not [c for s in (w.ee, w.ta, w.sts) for c in s.commands
                    if c[0] == "MAIL" and not c[1]]
        assert gateway.metric("sendsikkert_tls_policy_total", mechanism="dane",
                              result="secure") >= 2
        assert gateway.metric("sendsikkert_tls_policy_total", mechanism="mta_sts",
                              result="secure") >= 1
        assert gateway.metric("sendsikkert_recipients_total",
                              **{"class": "tunnel", "outcome": "delivered"}) == 3
        logs = gateway.logs()
        assert "DANE: TLSA DANE-EE 3 1 1" in logs and "matched the server certificate" in logs
        assert "DANE: TLSA DANE-TA 2 0 1" in logs and "matched the CA at depth 1" in logs
        assert "MTA-STS: sts.test (id 1) allows mx.sts.test" in logs


async def test_a_tlsa_that_matches_nothing_defers_tagged_and_untagged_mail(config, daemons,
                                                                         web_ca):
    async with world(web_ca) as w:
        configure(config, w, web_ca)
        gateway = await start(config, daemons)
        status, got = await check(gateway, "v@bad.dane.test")
        assert status == 0 and got["v@bad.dane.test"]["class"] == "tunnel"  # DNS says DANE
        await asyncio.to_thread(gateway.send, SENDER, ["v@bad.dane.test"],
                                tagged("v@bad.dane.test"))
        await asyncio.to_thread(gateway.send, "a@brondby.dk", ["w@bad.dane.test"], PLAIN)
        await wait_for(lambda: gateway.metric("sendsikkert_tls_failures_total",
                                              route="tunnel") >= 2
                       and gateway.metric("sendsikkert_tls_failures_total", route="plain") >= 2)
        states = await asyncio.to_thread(queue, gateway)
        assert w.ee.messages == [] and not [c for c in w.ee.commands if c[0] == "MAIL"]
    for address, cls in (("v@bad.dane.test", "tunnel"), ("w@bad.dane.test", "plain")):
        assert states[address]["state"] == "deferred" and states[address]["class"] == cls
        assert "4.7.5" in states[address]["last_error"]
        assert "matches no TLSA record" in states[address]["last_error"]
    assert gateway.outbox() == []  # waiting, not bounced
    assert "DANE: no TLSA record of mx.bad.dane.test matched: DANE-EE 3 1 1" in gateway.logs()


async def test_unsigned_dns_bounces_and_a_failed_lookup_waits(config, daemons, web_ca):
    async with world(web_ca) as w:
        configure(config, w, web_ca)
        gateway = await start(config, daemons)
        await asyncio.to_thread(gateway.send, SENDER, ["u@unsigned.test", "s@servfail.test"],
                                tagged("u@unsigned.test", "s@servfail.test"))
        [dsn] = await asyncio.to_thread(gateway.wait_outbox, 1)
        await wait_for(lambda: gateway.metric("sendsikkert_recipients_total", **{
            "class": "unknown", "outcome": "deferred"}) >= 2)
        states = await asyncio.to_thread(queue, gateway)
        status, _ = await check(gateway, "s@servfail.test")
    report = email.message_from_bytes(dsn.read_bytes(), policy=email.policy.default)
    [fields] = report.get_payload()[1].get_payload()[1:]
    assert fields["Final-Recipient"] == "rfc822; u@unsigned.test"
    assert fields["Status"] == "5.7.1"
    assert "not DNSSEC-signed" in fields["Diagnostic-Code"]
    assert states["s@servfail.test"]["state"] == "deferred"
    assert states["s@servfail.test"]["class"] == "unknown"
    assert status == EXIT_TEMPFAIL
    assert w.ee.connections == 0  # unsafe is never delivered
    assert gateway.metric("sendsikkert_tls_policy_total", mechanism="dane",
                          result="failed") >= 2


async def test_mta_sts_policies_are_cached_on_disk_and_follow_the_id(config, daemons, web_ca):
    async with world(web_ca) as w:
        configure(config, w, web_ca)
        gateway = await start(config, daemons)
        _, api = await asyncio.to_thread(gateway.http, "/api/check?address=c@changing.test")
        assert api["results"][0]["class"] == "tunnel"
        assert (config.spool / "mta-sts" / "changing.test.json").exists()
        # The policy changes but the id does not: the cache holds, in every process.
        w.web.policies["changing.test"] = policy("testing", "*.sts.test")
        assert (await check(gateway, "c@changing.test"))[1]["c@changing.test"]["class"] \
            == "tunnel"
        assert w.web.requests.count("changing.test") == 1
        # A restart does not forget it, even with the policy host gone.
        w.web.replies["changing.test"] = (503, "text/plain", "down")
        assert gateway.stop() == 0
        gateway = await start(config, daemons)
        _, api = await asyncio.to_thread(gateway.http, "/api/check?address=c@changing.test")
        assert api["results"][0]["class"] == "tunnel"
        # A new id: fetched again, and now the policy only tests.
        del w.web.replies["changing.test"]
        w.dns.zone["_mta-sts.changing.test"] = {"TXT": ["v=STSv1; id=2;"]}
        status, got = await check(gateway, "c@changing.test")
    assert status == EXIT_UNSAFE and "testing mode" in got["c@changing.test"]["reason"]
    assert w.web.requests.count("changing.test") == 2


async def test_both_switches_off_change_nothing(config, daemons, web_ca):
    async with world(web_ca) as w:
        configure(config, w, web_ca, dane=False, mta_sts=False)
        gateway = await start(config, daemons)
        status, got = await check(gateway, "x@dane.test", "z@sts.test")
        await asyncio.to_thread(gateway.send, "a@brondby.dk", ["w@bad.dane.test"], PLAIN)
        [msg] = await w.ee.wait_for(1, within=20)  # opportunistic TLS, TLSA not consulted
        asked = {qtype for _, qtype in w.dns.queries}
    assert status == EXIT_UNSAFE
    assert {r["class"] for r in got.values()} == {"unsafe"}
    assert "mechanism" not in got["x@dane.test"]
    assert msg.rcpt_tos == ["w@bad.dane.test"]
    assert "TLSA" not in asked and "TXT" not in asked
    assert w.web.requests == []
