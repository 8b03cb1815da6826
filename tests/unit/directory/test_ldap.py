"""LdapSource and LookupCache against a real OpenLDAP slapd (tests/support/slapd.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.config import ConfigError, DirectoryConfig
from gateway.directory import DirectoryUnavailable
from gateway.directory.cache import LookupCache
from gateway.directory.ldap import LdapSource, escape_filter_value
from tests.support.addresses import GARBAGE
from tests.support.pki import CA
from tests.support.slapd import Slapd

ORG = "o=Brøndby Kommune,c=DK"
TIMEOUT = 0.5


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(url: str, **changes: object) -> DirectoryConfig:
    # The source never reads the trust anchors; the configuration still needs one.
    base = DirectoryConfig(backend="ldap", url=url, base_dn="c=DK", timeout=TIMEOUT,
                           attributes=("userCertificate;binary", "userSMIMECertificate"),
                           trust_anchors=("/etc/send-sikkert/trust/*.pem",))
    return base.model_copy(update=changes)


@pytest.fixture
async def make_source() -> AsyncIterator[Callable[..., LdapSource]]:
    """Builds LdapSources from config() arguments and closes them after the test."""
    made: list[LdapSource] = []

    def make(url: str, *, clock: Callable[[], float] = time.monotonic,
             **changes: object) -> LdapSource:
        made.append(LdapSource(config(url, **changes), clock=clock))
        return made[-1]

    yield make
    for source in made:
        await source.close()


async def test_finds_every_certificate_of_an_entry(slapd: Slapd, ldap_ca: CA,
                                                   make_source: Callable[..., LdapSource]) -> None:
    first, second = ldap_ca.issue("anna@brondby.dk"), ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [first.der, second.der])
    source = make_source(slapd.url)
    assert sorted(await source.lookup("anna@brondby.dk")) == sorted([first.der, second.der])


async def test_not_found_is_an_empty_list(slapd: Slapd, ldap_ca: CA,
                                          make_source: Callable[..., LdapSource]) -> None:
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    assert await make_source(slapd.url).lookup("bo@brondby.dk") == []


async def test_several_entries_for_one_address(slapd: Slapd, ldap_ca: CA,
                                               make_source: Callable[..., LdapSource]) -> None:
    personal, function = ldap_ca.issue("anna@brondby.dk"), ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [personal.der])
    slapd.add_entry("cn=Anna Hansen,o=Region Hovedstaden,c=DK", ["anna@brondby.dk", "ah@rh.dk"],
                    [function.der])
    found = await make_source(slapd.url).lookup("anna@brondby.dk")
    assert sorted(found) == sorted([personal.der, function.der])


async def test_usersmimecertificate_bare_and_pkcs7(slapd: Slapd, ldap_ca: CA,
                                                   make_source: Callable[..., LdapSource]) -> None:
    bare, packed, extra = (ldap_ca.issue("anna@brondby.dk") for _ in range(3))
    bundle = pkcs7.serialize_certificates([packed.cert, extra.cert], Encoding.DER)
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [bare.der],
                    attr="userSMIMECertificate")
    slapd.add_entry(f"cn=Anna H,{ORG}", "anna@brondby.dk", [bundle], attr="userSMIMECertificate")
    found = await make_source(slapd.url).lookup("anna@brondby.dk")
    assert sorted(found) == sorted([bare.der, packed.der, extra.der])


async def test_contract_default_attributes_also_read_usersmimecertificate(
        slapd: Slapd, ldap_ca: CA, make_source: Callable[..., LdapSource]) -> None:
    # OpenLDAP refuses ";binary" on userSMIMECertificate and skips it in a request.
    user, smime = ldap_ca.issue("anna@brondby.dk"), ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [user.der])
    slapd.add_entry(f"cn=Anna H,{ORG}", "anna@brondby.dk", [smime.der], attr="userSMIMECertificate")
    source = make_source(slapd.url, attributes=DirectoryConfig.model_fields["attributes"].default)
    assert sorted(await source.lookup("anna@brondby.dk")) == sorted([user.der, smime.der])


async def test_a_certificate_in_two_attributes_comes_once(
        slapd: Slapd, ldap_ca: CA, make_source: Callable[..., LdapSource]) -> None:
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    slapd.add_entry(f"cn=Anna H,{ORG}", "anna@brondby.dk", [cert.der], attr="userSMIMECertificate")
    assert await make_source(slapd.url).lookup("anna@brondby.dk") == [cert.der]


# --- filter injection and address checks ------------------------------------------------


@pytest.fixture
def two_entries(slapd: Slapd, ldap_ca: CA) -> dict[str, bytes]:
    """anna@x.dk, whom no lookup for anything else may ever return, and a literal a*@x.dk."""
    anna, star = ldap_ca.issue("anna@x.dk"), ldap_ca.issue("a*@x.dk")
    slapd.add_entry(f"cn=Anna,{ORG}", "anna@x.dk", [anna.der])
    slapd.add_entry(f"cn=Star,{ORG}", "a*@x.dk", [star.der])
    return {"anna": anna.der, "star": star.der}


async def test_an_asterisk_is_matched_literally(slapd: Slapd, two_entries: dict[str, bytes],
                                                make_source: Callable[..., LdapSource]) -> None:
    source = make_source(slapd.url)
    assert await source.lookup("a*@x.dk") == [two_entries["star"]]
    assert await source.lookup("*@x.dk") == []
    assert await source.lookup("ann*@x.dk") == []


@pytest.mark.parametrize("address", [
    "*)(mail=*", "*", "anna@x.dk)(mail=*", "(mail=*)", '"*)(mail=*"@x.dk',
    '"anna@x.dk)(mail=*"@x.dk', '"a\\)(objectClass=*"@x.dk', "a*)(mail=*@brøndby.dk",
    "hm%hotmail.dk@x.dk",
])
async def test_filter_syntax_as_the_address_is_refused(
        slapd: Slapd, two_entries: dict[str, bytes], make_source: Callable[..., LdapSource],
        address: str) -> None:
    """Quoted local parts and filter syntax never reach a filter: the gateway's address
    rule (gateway.policy.address) admits only dot-atom mailboxes."""
    with pytest.raises(ValueError):
        await make_source(slapd.url).lookup(address)


async def test_a_utf8_mailbox_is_looked_up_escaped(
        slapd: Slapd, two_entries: dict[str, bytes],
        make_source: Callable[..., LdapSource]) -> None:
    """SMTPUTF8 mailboxes (RFC 6531) are valid; RFC 4515 carries them as UTF-8."""
    assert await make_source(slapd.url).lookup("søren@brøndby.dk") == []


def test_escape_filter_value() -> None:
    assert escape_filter_value("a*b(c)d\\e\0f") == r"a\2ab\28c\29d\5ce\00f"
    assert escape_filter_value("søren") == r"s\c3\b8ren"
    assert escape_filter_value("plain.name+tag@x.dk") == "plain.name+tag@x.dk"


async def test_garbage_is_refused_before_any_lookup(slapd: Slapd,
                                                    make_source: Callable[..., LdapSource]) -> None:
    source = make_source(slapd.url)
    slapd.stop()  # a lookup would raise DirectoryUnavailable, not ValueError
    for address in GARBAGE:
        with pytest.raises(ValueError):
            await source.lookup(address)


# --- an unreliable server ---------------------------------------------------------------


async def test_server_down_then_back(slapd: Slapd, ldap_ca: CA,
                                     make_source: Callable[..., LdapSource]) -> None:
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    source = make_source(slapd.url, cache_ttl=0, negative_cache_ttl=0)
    assert await source.lookup("anna@brondby.dk") == [cert.der]
    slapd.stop()
    with pytest.raises(DirectoryUnavailable, match="Can't contact LDAP server"):
        await source.lookup("anna@brondby.dk")
    with pytest.raises(DirectoryUnavailable):
        await source.ping()
    slapd.start()
    assert await source.lookup("anna@brondby.dk") == [cert.der]
    await source.ping()


async def test_restart_between_lookups_is_invisible(slapd: Slapd, ldap_ca: CA,
                                                    make_source: Callable[..., LdapSource]) -> None:
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    source = make_source(slapd.url, cache_ttl=0, negative_cache_ttl=0, pool_size=3)
    await asyncio.gather(*(source.lookup("anna@brondby.dk") for _ in range(3)))  # 3 pooled
    slapd.restart()  # every pooled connection is now dead
    assert await source.lookup("anna@brondby.dk") == [cert.der]


class LoopWatch:
    """Measures the longest time the event loop went without running a 5 ms ticker."""

    async def __aenter__(self) -> LoopWatch:
        self.longest = 0.0
        self._task = asyncio.create_task(self._tick())
        return self

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.longest, last = max(self.longest, now - last), now

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()


@pytest.mark.serial
@pytest.mark.parametrize("scheme", ["ldap", "ldaps", "starttls"])
async def test_a_hung_server_times_out_without_blocking_the_loop(
        slapd: Slapd, ldap_ca: CA, make_source: Callable[..., LdapSource], scheme: str) -> None:
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    url = slapd.ldaps_url if scheme == "ldaps" else slapd.url
    source = make_source(url, starttls=scheme == "starttls", ca_file=slapd.ca_file,
                         cache_ttl=0, negative_cache_ttl=0)
    assert await source.lookup("anna@brondby.dk") == [cert.der]  # one pooled connection
    slapd.pause()
    async with LoopWatch() as watch:
        for _ in range(2):  # on the pooled connection, then on a new one
            started = time.monotonic()
            with pytest.raises(DirectoryUnavailable, match="no answer within 0.5 s"):
                await source.lookup("anna@brondby.dk")
            assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 0.4
    assert watch.longest < 0.2
    slapd.resume()
    assert await source.lookup("anna@brondby.dk") == [cert.der]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_connects_given_up_do_not_leak_sockets(
        slapd: Slapd, make_source: Callable[..., LdapSource]) -> None:
    # bonsai cannot close a half-made connection; LdapSource must finish and free it.
    source = make_source(slapd.url, starttls=True, ca_file=slapd.ca_file)
    await source.ping()
    await source.close()
    before = open_descriptors()
    slapd.pause()
    for _ in range(3):
        with pytest.raises(DirectoryUnavailable):
            await source.ping()
    slapd.resume()
    await source.ping()
    await source.close()
    for _ in range(100):  # the abandoned connects end in the background
        if open_descriptors() <= before:
            break
        await asyncio.sleep(0.05)
    assert open_descriptors() <= before


async def test_many_lookups_share_a_small_pool(slapd: Slapd, ldap_ca: CA,
                                               make_source: Callable[..., LdapSource]) -> None:
    certs = {f"p{i}@x.dk": ldap_ca.issue(f"p{i}@x.dk").der for i in range(12)}
    for address, der in certs.items():
        slapd.add_entry(f"cn={address},{ORG}", address, [der])
    source = make_source(slapd.url, pool_size=2, timeout=5)
    found = await asyncio.gather(*(source.lookup(a) for a in certs))
    assert found == [[der] for der in certs.values()]


# --- TLS and bind -------------------------------------------------------------------------


async def test_ldaps_and_starttls_verify_the_server(slapd: Slapd, ldap_ca: CA, tmp_path: Path,
                                                    make_source: Callable[..., LdapSource]) -> None:
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    stranger = tmp_path / "other-ca.pem"
    stranger.write_bytes(CA("Some Other CA").pem)
    for url, starttls in ((slapd.ldaps_url, False), (slapd.url, True)):
        good = make_source(url, starttls=starttls, ca_file=slapd.ca_file)
        assert await good.lookup("anna@brondby.dk") == [cert.der]
        bad = make_source(url, starttls=starttls, ca_file=stranger)
        with pytest.raises(DirectoryUnavailable, match="TLS"):
            await bad.lookup("anna@brondby.dk")


def test_starttls_on_ldaps_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="directory.starttls"):
        LdapSource(config("ldaps://127.0.0.1:1636", starttls=True))


async def test_bind_with_password_file(slapd: Slapd, ldap_ca: CA, tmp_path: Path,
                                                  make_source: Callable[..., LdapSource]) -> None:
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    reader = f"cn=gateway,{ORG}"
    slapd.add_entry(reader, None, password="s3cret")
    password_file = tmp_path / "ldap-password"
    password_file.write_text("s3cret\n")
    source = make_source(slapd.url, bind_dn=reader, bind_password_file=password_file,
                         cache_ttl=0, negative_cache_ttl=0)
    assert await source.lookup("anna@brondby.dk") == [cert.der]

    password_file.write_text("wrong\n")
    assert await source.lookup("anna@brondby.dk") == [cert.der]  # read once, at the start
    wrong = make_source(slapd.url, bind_dn=reader, bind_password_file=password_file,
                        cache_ttl=0, negative_cache_ttl=0)  # SIGHUP: a new source
    with pytest.raises(DirectoryUnavailable, match="bind as 'cn=gateway,o=Brøndby Kommune,c=DK' "
                                                   "refused: Invalid credentials"):
        await wrong.lookup("anna@brondby.dk")
    with pytest.raises(DirectoryUnavailable, match="Invalid credentials"):
        await wrong.ping()


async def test_bind_with_password_from_the_environment(
        slapd: Slapd, make_source: Callable[..., LdapSource],
        monkeypatch: pytest.MonkeyPatch) -> None:
    reader = f"cn=gateway,{ORG}"
    slapd.add_entry(reader, None, password="s3cret")
    monkeypatch.setenv("TEST_LDAP_PASSWORD", "s3cret")
    source = make_source(slapd.url, bind_dn=reader, bind_password_env="TEST_LDAP_PASSWORD")
    await source.ping()
    monkeypatch.setenv("TEST_LDAP_PASSWORD", "nope")
    wrong = make_source(slapd.url, bind_dn=reader, bind_password_env="TEST_LDAP_PASSWORD")
    with pytest.raises(DirectoryUnavailable, match="Invalid credentials"):
        await wrong.ping()


@pytest.mark.parametrize(("changes", "key"), [
    ({}, "directory.bind_dn"),
    ({"bind_password_file": Path("/nonexistent/ldap-password")}, "directory.bind_password_file"),
    ({"bind_password_env": "TEST_LDAP_UNSET"}, "directory.bind_password_env"),
    ({"bind_password_env": "TEST_LDAP_EMPTY"}, "directory.bind_dn"),
    ({"bind_password_env": "TEST_LDAP_EMPTY", "bind_password_file": Path("/x")},
     "directory.bind_password_env"),
])
def test_bind_password_problems_are_configuration_errors(
        changes: dict[str, object], key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_LDAP_UNSET", raising=False)
    monkeypatch.setenv("TEST_LDAP_EMPTY", "")
    with pytest.raises(ConfigError, match=key) as raised:
        LdapSource(config("ldap://127.0.0.1:1389", bind_dn="cn=gateway,c=DK", **changes),
                   config_file="gateway.toml")
    assert raised.value.file == "gateway.toml"


async def test_a_wrong_base_dn_is_reported(slapd: Slapd,
                                           make_source: Callable[..., LdapSource]) -> None:
    # bonsai turns noSuchObject into "no entries": that must not read as "no certificate".
    wrong = "base DN 'o=Typo,c=DK' does not exist or cannot be read"
    source = make_source(slapd.url, base_dn="o=Typo,c=DK")
    with pytest.raises(DirectoryUnavailable, match=wrong):
        await source.lookup("anna@brondby.dk")
    with pytest.raises(DirectoryUnavailable, match=wrong):
        await source.ping()


# --- the cache ----------------------------------------------------------------------------


async def test_cached_answers_survive_the_server(slapd: Slapd, ldap_ca: CA,
                                                 make_source: Callable[..., LdapSource]) -> None:
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    clock = Clock()
    source = make_source(slapd.url, clock=clock, cache_ttl=60, negative_cache_ttl=10)
    assert await source.lookup("anna@brondby.dk") == [cert.der]
    assert await source.lookup("bo@brondby.dk") == []
    slapd.stop()
    assert await source.lookup("anna@brondby.dk") == [cert.der]
    assert await source.lookup("bo@brondby.dk") == []
    with pytest.raises(DirectoryUnavailable):
        await source.lookup("carl@brondby.dk")
    clock.now += 11  # the negative answer has expired, the positive one not
    assert await source.lookup("anna@brondby.dk") == [cert.der]
    with pytest.raises(DirectoryUnavailable):
        await source.lookup("bo@brondby.dk")
    clock.now += 50
    with pytest.raises(DirectoryUnavailable):
        await source.lookup("anna@brondby.dk")


async def test_a_certificate_published_later_shows_after_the_negative_ttl(
        slapd: Slapd, ldap_ca: CA, make_source: Callable[..., LdapSource]) -> None:
    clock = Clock()
    source = make_source(slapd.url, clock=clock, negative_cache_ttl=300)
    assert await source.lookup("anna@brondby.dk") == []
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    assert await source.lookup("anna@brondby.dk") == []
    clock.now += 301
    assert await source.lookup("anna@brondby.dk") == [cert.der]


async def test_failures_are_not_cached_and_a_new_source_asks_again(
        slapd: Slapd, ldap_ca: CA, make_source: Callable[..., LdapSource]) -> None:
    source = make_source(slapd.url)
    slapd.stop()
    with pytest.raises(DirectoryUnavailable):
        await source.lookup("anna@brondby.dk")
    slapd.start()
    assert await source.lookup("anna@brondby.dk") == []  # asked again, now cached as none
    cert = ldap_ca.issue("anna@brondby.dk")
    slapd.add_entry(f"cn=Anna Hansen,{ORG}", "anna@brondby.dk", [cert.der])
    assert await source.lookup("anna@brondby.dk") == []
    assert await make_source(slapd.url).lookup("anna@brondby.dk") == [cert.der]  # SIGHUP


def test_cache_ttls() -> None:
    clock = Clock()
    cache = LookupCache(ttl=60, negative_ttl=5, max_size=10, clock=clock)
    cache.put("anna@x.dk", [b"der"])
    cache.put("bo@x.dk", [])
    assert cache.get("anna@x.dk") == [b"der"]
    assert cache.get("bo@x.dk") == []
    assert cache.get("carl@x.dk") is None
    clock.now += 5
    assert cache.get("bo@x.dk") is None
    assert cache.get("anna@x.dk") == [b"der"]
    clock.now += 55
    assert cache.get("anna@x.dk") is None
    assert len(cache) == 0


def test_cache_evicts_the_least_recently_used() -> None:
    cache = LookupCache(ttl=60, negative_ttl=60, max_size=2, clock=Clock())
    cache.put("a@x.dk", [b"a"])
    cache.put("b@x.dk", [b"b"])
    assert cache.get("a@x.dk") == [b"a"]  # now b is the oldest in use
    cache.put("c@x.dk", [])
    assert cache.get("b@x.dk") is None
    assert cache.get("a@x.dk") == [b"a"]
    assert cache.get("c@x.dk") == []
    assert len(cache) == 2


def test_cache_clear_and_zero_settings() -> None:
    cache = LookupCache(ttl=60, negative_ttl=0, max_size=5, clock=Clock())
    cache.put("a@x.dk", [b"a"])
    cache.put("b@x.dk", [])  # negative_ttl 0: not kept
    assert cache.get("b@x.dk") is None
    cache.clear()
    assert cache.get("a@x.dk") is None
    unbounded_off = LookupCache(ttl=60, negative_ttl=60, max_size=0)
    unbounded_off.put("a@x.dk", [b"a"])
    assert unbounded_off.get("a@x.dk") is None


def test_cache_hands_out_copies() -> None:
    cache = LookupCache(ttl=60, negative_ttl=60, max_size=5, clock=Clock())
    cache.put("a@x.dk", [b"a"])
    cache.get("a@x.dk").append(b"mutated")  # type: ignore[union-attr]
    assert cache.get("a@x.dk") == [b"a"]
