"""Whether DANE or MTA-STS vouch for a domain (the classifier's lookup), and delivery under
the `mta-sts` level: a real DNS server, real HTTPS policy hosts and SMTP servers."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from prometheus_client import REGISTRY

from gateway.config import Config, ConfigError, load
from gateway.delivery import Rcpt, Result, Route, TlsPolicy
from gateway.delivery.mtasts.fetch import PolicyFetcher
from gateway.delivery.mtasts.files import FilePolicyStore
from gateway.delivery.mtasts.service import MtaSts
from gateway.delivery.mx import MxResolver, MxTransport
from gateway.delivery.resolver import DnsResolver
from gateway.delivery.security import TransportSecurity, open_transport_security
from gateway.delivery.smtp import SmtpTransport
from tests.support.dns import DnsServer
from tests.support.pki import CA
from tests.support.policyhost import PolicyHost, policy
from tests.support.sink import SmtpSink, server_tls

OK = 250
MX1, MX2, WEB = "127.0.0.2", "127.0.0.3", "127.0.0.5"
PORT = 2525  # the SMTP port the TLSA names carry; no connection is made to it here
KEY = CA("DANE host CA").issue(common_name="mx", server=True)
DIGEST = hashlib.sha256(KEY.cert.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
EE = (3, 1, 1, DIGEST)
PKIX = (1, 1, 1, DIGEST)


def signed_domain(zone: dict[str, Any], domain: str, *hosts: str, tlsa: Any = (EE,)) -> None:
    zone[domain] = {"MX": [(10 * (i + 1), h) for i, h in enumerate(hosts)]}
    for i, host in enumerate(hosts):
        zone[host] = {"A": [(MX1, MX2)[i % 2]]}
        if tlsa is not None:
            zone[f"_{PORT}._tcp.{host}"] = {"TLSA": list(tlsa)} if tlsa else {}


@pytest.fixture
def zone() -> dict[str, Any]:
    zone: dict[str, Any] = {}
    signed_domain(zone, "dane.test", "mx1.dane.test", "mx2.dane.test")
    signed_domain(zone, "pkix.dane.test", "mx.pkix.dane.test", tlsa=(PKIX,))
    signed_domain(zone, "half.dane.test", "mx1.half.dane.test", "mx2.half.dane.test")
    del zone[f"_{PORT}._tcp.mx2.half.dane.test"]
    signed_domain(zone, "broken.dane.test", "mx1.broken.dane.test", "mx2.broken.dane.test")
    zone[f"_{PORT}._tcp.mx2.broken.dane.test"] = "SERVFAIL"
    signed_domain(zone, "unsigned.test", "mx1.unsigned.test")  # TLSA, but no AD
    signed_domain(zone, "outside.dane.test", "mx.elsewhere.test")  # host in an unsigned zone
    zone["servfail.dane.test"] = "SERVFAIL"
    zone["nullmx.dane.test"] = {"MX": [(0, ".")]}
    signed_domain(zone, "sts.test", "mx1.sts.test", "mx2.other.test", tlsa=None)
    signed_domain(zone, "both.dane.test", "mx1.both.dane.test")  # DANE and MTA-STS
    signed_domain(zone, "stsbroken.dane.test", "mx1.stsbroken.dane.test")
    zone[f"_{PORT}._tcp.mx1.stsbroken.dane.test"] = "SERVFAIL"
    signed_domain(zone, "nomatch.test", "mx1.nomatch.test", tlsa=None)
    for domain in ("sts.test", "both.dane.test", "stsbroken.dane.test", "nomatch.test"):
        zone[f"_mta-sts.{domain}"] = {"TXT": ["v=STSv1; id=1"]}
        zone[f"mta-sts.{domain}"] = {"A": [WEB]}
    return zone


@pytest.fixture
def dns(zone: dict[str, Any]) -> Iterator[DnsServer]:
    with DnsServer(zone, signed={"dane.test"}) as server:
        yield server


@pytest.fixture(scope="module")
def web_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def web(web_ca: trustme.CA) -> AsyncIterator[PolicyHost]:
    names = ["mta-sts.sts.test", "mta-sts.both.dane.test", "mta-sts.stsbroken.dane.test",
             "mta-sts.nomatch.test"]
    async with PolicyHost(host=WEB, tls=server_tls(web_ca, *names)) as host:
        for domain in ("sts.test", "both.dane.test", "stsbroken.dane.test"):
            host.policies[domain] = policy("enforce", f"*.{domain}")
        host.policies["nomatch.test"] = policy("enforce", "mail.nomatch.test")
        yield host


def mta_sts(dns: DnsServer, web: PolicyHost, web_ca: trustme.CA, folder: Path) -> MtaSts:
    ca = folder / "web-ca.pem"
    web_ca.cert_pem.write_to_path(str(ca))
    resolver = DnsResolver([dns.nameserver], timeout=5)
    return MtaSts(resolver, PolicyFetcher(resolver, ca_file=ca, port=web.port),
                  FilePolicyStore(folder / "mta-sts"))


def lookup(dns: DnsServer, *, dane: bool = True, sts: MtaSts | None = None
           ) -> TransportSecurity:
    return TransportSecurity(MxResolver(DnsResolver([dns.nameserver], timeout=5)), dane=dane,
                             mta_sts=sts, port=PORT)


def counted(mechanism: str, result: str) -> float:
    return REGISTRY.get_sample_value("sendsikkert_tls_policy_total",
                                     {"mechanism": mechanism, "result": result}) or 0.0


async def test_dane_vouches_for_a_domain_whose_every_host_is_signed(dns):
    before = counted("dane", "secure")
    check = await lookup(dns).check("dane.test")
    assert (check.result, check.mechanism) == ("secure", "dane")
    assert "DANE" in check.reason and "mx1.dane.test, mx2.dane.test" in check.reason
    assert counted("dane", "secure") == before + 1


@pytest.mark.parametrize(("domain", "why"), [
    ("unsigned.test", "the MX records of unsigned.test are not DNSSEC-signed"),
    ("outside.dane.test", "the addresses of mx.elsewhere.test are not DNSSEC-signed"),
    ("pkix.dane.test", "no TLSA record usable for SMTP"),
    ("half.dane.test", f"_{PORT}._tcp.mx2.half.dane.test has no TLSA records"),
    ("nullmx.dane.test", "null MX"),
    ("nxdomain.dane.test", "does not exist"),
])
async def test_what_is_not_dane(dns, domain, why):
    check = await lookup(dns).check(domain)
    assert check.result == "insecure" and why in check.reason


@pytest.mark.parametrize("domain", ["servfail.dane.test", "broken.dane.test"])
async def test_a_failed_lookup_is_a_failure_not_a_no(dns, domain):
    before = counted("dane", "failed")
    check = await lookup(dns).check(domain)
    assert (check.result, check.mechanism) == ("failed", "dane")
    assert "failed" in check.reason
    assert counted("dane", "failed") == before + 1


async def test_a_host_without_dane_settles_it_even_when_another_failed(dns):
    dns.zone[f"_{PORT}._tcp.mx1.half.dane.test"] = "SERVFAIL"
    assert (await lookup(dns).check("half.dane.test")).result == "insecure"


async def test_with_dane_off_no_tlsa_is_asked(dns):
    check = await lookup(dns, dane=False).check("dane.test")
    assert check.result == "insecure" and not [q for q in dns.queries if q[1] == "TLSA"]


async def test_mta_sts_vouches_after_dane_and_names_the_allowed_hosts(dns, web, web_ca,
                                                                      tmp_path):
    sts = mta_sts(dns, web, web_ca, tmp_path)
    check = await lookup(dns, sts=sts).check("sts.test")
    assert (check.result, check.mechanism) == ("secure", "mta_sts")
    assert "mx1.sts.test" in check.reason and "mx2.other.test" not in check.reason
    both = await lookup(dns, sts=sts).check("both.dane.test")
    assert both.mechanism == "dane"  # DANE first: its policy was never needed
    assert web.requests == ["sts.test"]


async def test_mta_sts_cannot_override_a_failed_dane_lookup(dns, web, web_ca, tmp_path):
    check = await lookup(dns, sts=mta_sts(dns, web, web_ca, tmp_path)).check(
        "stsbroken.dane.test")
    assert (check.result, check.mechanism) == ("failed", "dane")


async def test_a_policy_naming_none_of_the_mx_hosts_does_not_vouch(dns, web, web_ca, tmp_path):
    check = await lookup(dns, sts=mta_sts(dns, web, web_ca, tmp_path)).check("nomatch.test")
    assert check.result == "insecure" and "names none of its mail hosts" in check.reason


async def test_neither_says_why_for_both(dns, web, web_ca, tmp_path):
    check = await lookup(dns, sts=mta_sts(dns, web, web_ca, tmp_path)).check("unsigned.test")
    assert check.result == "insecure"
    assert "no DANE" in check.reason and "no MTA-STS" in check.reason


# --- delivery under the mta-sts level -------------------------------------------------

async def deliver(dns: DnsServer, sts: MtaSts, port: int, domain: str, ca_file: Path) -> Result:
    mx = MxTransport(SmtpTransport("gw.brondby.test", timeout=5, connect_timeout=2),
                     MxResolver(DnsResolver([dns.nameserver], timeout=5)), port=port,
                     mta_sts=sts)
    return await mx.deliver(Route("mx"), domain, "anna@brondby.test", [Rcpt(f"lone@{domain}")],
                            b"Subject: Hej\r\n\r\nTekst.\r\n",
                            TlsPolicy("mta-sts", ca_file=ca_file), queue_id="Q1")


def only(result: Result) -> tuple[int, str]:
    [reply] = result.replies.values()
    return reply.code, reply.status


async def test_mta_sts_delivers_only_to_allowed_hosts_with_a_valid_certificate(
        dns, web, web_ca, tmp_path, trusted_ca, ca_file):
    sts = mta_sts(dns, web, web_ca, tmp_path)
    # mx1.sts.test (127.0.0.2) is allowed; mx2.other.test (127.0.0.3) is not.
    async with SmtpSink(host=MX1, tls=server_tls(trusted_ca, "mx1.sts.test")) as one, \
            SmtpSink(host=MX2, port=one.port, tls=server_tls(trusted_ca, "mx2.other.test")) \
            as two:
        assert only(await deliver(dns, sts, one.port, "sts.test", ca_file)) == (OK, "2.0.0")
        one.refuse["lone@sts.test"] = "451 4.3.0 try later"
        assert only(await deliver(dns, sts, one.port, "sts.test", ca_file))[0] == 451
    assert len(one.messages) == 1 and one.messages[0].tls
    assert two.connections == 0  # never tried, though it would have taken it


async def test_mta_sts_needs_a_certificate_for_the_mx_name(dns, web, web_ca, tmp_path,
                                                          trusted_ca, untrusted_ca, ca_file):
    sts = mta_sts(dns, web, web_ca, tmp_path)
    for tls in (server_tls(trusted_ca, "sts.test"), server_tls(untrusted_ca, "mx1.sts.test"),
                None):
        async with SmtpSink(host=MX1, tls=tls) as one:
            result = await deliver(dns, sts, one.port, "sts.test", ca_file)
        assert only(result) == (451, "4.7.5") and result.tls_failure
        assert not [c for c in one.commands if c[0] == "MAIL"]


@pytest.mark.parametrize(("domain", "why"), [
    ("nomatch.test", "no mail host of nomatch.test (mx1.nomatch.test) matches its policy"),
    ("unsigned.test", "publishes no MTA-STS policy"),
])
async def test_without_an_enforced_policy_mta_sts_delivery_waits(dns, web, web_ca, tmp_path,
                                                                 ca_file, domain, why):
    async with SmtpSink(host=MX1) as one:
        result = await deliver(dns, mta_sts(dns, web, web_ca, tmp_path), one.port, domain,
                               ca_file)
    assert only(result) == (451, "4.7.5") and why in result.replies[f"lone@{domain}"].text
    assert one.connections == 0


# --- built from the configuration ---------------------------------------------------------

DEMO = Path(__file__).parents[3] / "policies" / "gateway.toml"


def with_switches(tmp_path: Path, **settings: Any) -> Config:
    demo = load(DEMO)
    return demo.model_copy(update={
        "spool": demo.spool.model_copy(update={"dir": tmp_path / "spool"}),
        "transport_security": demo.transport_security.model_copy(update=settings)})


def test_both_switches_off_build_no_lookup(tmp_path):
    parts = open_transport_security(with_switches(tmp_path))
    assert parts.lookup is None and parts.mta_sts is None


def test_the_switches_build_what_they_name(tmp_path, ca_file):
    parts = open_transport_security(with_switches(tmp_path, dane=True))
    assert parts.lookup is not None and parts.lookup.dane and parts.mta_sts is None
    parts = open_transport_security(with_switches(tmp_path, mta_sts=True, ca_file=ca_file))
    assert parts.lookup is not None and not parts.lookup.dane and parts.mta_sts is not None
    assert isinstance(parts.mta_sts.store, FilePolicyStore)
    assert parts.mta_sts.store.folder == tmp_path / "spool" / "mta-sts"


def test_an_unusable_ca_file_is_a_configuration_error(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(ConfigError, match="transport_security.ca_file"):
            open_transport_security(with_switches(tmp_path, mta_sts=True, ca_file=path))
