"""CrlStore: CRLs from files and from a real HTTP server on 127.0.0.1, refreshed in time."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.directory.crl import CrlStore
from gateway.directory.validate import RecipientValidator
from gateway.model import RecipientClass
from tests.support.pki import CA, NOW
from tests.support.waiting import eventually

ADDRESS = "borger@example.dk"


class CrlServer:
    """Serves one CRL over HTTP and counts the requests."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.requests = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(body=self.body, status=self.status, content_type="application/pkix-crl")


@pytest.fixture
async def server() -> AsyncIterator[CrlServer]:
    crl_server = CrlServer()
    app = web.Application()
    app.router.add_get("/issuing.crl", crl_server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    crl_server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/issuing.crl"
    yield crl_server
    await runner.cleanup()


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("CRL Test CA")


@pytest.fixture
async def stores() -> AsyncIterator[list[CrlStore]]:
    """Stores put here are closed after the test."""
    made: list[CrlStore] = []
    yield made
    for store in made:
        await store.close()


def numbers(store: CrlStore) -> list[int]:
    """The CRLNumber of every CRL held: which version of a list is in use."""
    return [c.crl_number_value.native for c in store.current()]


async def test_files_pem_and_der(tmp_path, ca):
    der = ca.crl()
    (tmp_path / "a.crl").write_bytes(der)
    pem = x509.load_der_x509_crl(der).public_bytes(Encoding.PEM)
    (tmp_path / "b.pem").write_bytes(pem)
    store = CrlStore([str(tmp_path / "*.crl"), str(tmp_path / "b.pem")], [ca.cert])
    await store.refresh()
    assert [c.dump() for c in store.current()] == [der, der]


async def test_revoked_per_crl_over_http(server, stores):
    issuer = CA("HTTP CRL CA")
    leaf = issuer.issue(ADDRESS)
    when = NOW - timedelta(days=2)
    issuer.revoke(leaf, when)
    server.body = issuer.crl()
    store = CrlStore([server.url], [issuer.cert])
    stores.append(store)
    validator = RecipientValidator([issuer.cert], crls=store)
    try:
        await store.refresh()
        choice = await validator.choose(ADDRESS, [leaf.der])
    finally:
        validator.close()
    assert (choice.cls, choice.reason) == (RecipientClass.UNSAFE, f"revoked {when:%Y-%m-%d}")
    assert server.requests == 1


@pytest.mark.parametrize(("mode", "cls"), [("soft-fail", RecipientClass.SMIME),
                                           ("hard-fail", RecipientClass.UNKNOWN)])
async def test_crl_server_without_the_list(server, stores, ca, mode, cls):
    server.status = 404
    store = CrlStore([server.url], [ca.cert])
    stores.append(store)
    validator = RecipientValidator([ca.cert], crls=store, revocation=mode)
    try:
        await store.refresh()
        assert store.current() == []
        assert (await validator.choose(ADDRESS, [ca.issue(ADDRESS).der])).cls == cls
    finally:
        validator.close()


async def test_last_good_crl_survives_failed_downloads(server, stores, ca):
    server.body = ca.crl()
    store = CrlStore([server.url], [ca.cert])
    stores.append(store)
    await store.refresh()
    held = numbers(store)
    for status, body in [(500, b"oops"), (200, b"not a CRL"), (200, b"")]:
        server.status, server.body = status, body
        await store.refresh(force=True)
        assert numbers(store) == held


async def test_forged_crl_is_refused_when_the_issuer_is_configured(server, stores):
    genuine = CA("Issuer")
    forger = CA("Issuer")  # same name, other key
    store = CrlStore([server.url], [genuine.cert])
    stores.append(store)
    server.body = forger.crl()
    await store.refresh()
    assert store.current() == []
    server.body = good = genuine.crl()
    await store.refresh(force=True)
    assert [c.dump() for c in store.current()] == [good]
    server.body = forger.crl(last_update=NOW)  # even when it claims to be newer
    await store.refresh(force=True)
    assert [c.dump() for c in store.current()] == [good]


async def test_older_crl_does_not_replace_a_newer_one(server, stores, ca):
    server.body = ca.crl(last_update=NOW - timedelta(hours=1))
    store = CrlStore([server.url], [ca.cert])
    stores.append(store)
    await store.refresh()
    newer = [c.dump() for c in store.current()]
    server.body = ca.crl(last_update=NOW - timedelta(days=2))  # a replayed old list
    await store.refresh(force=True)
    assert [c.dump() for c in store.current()] == newer


async def test_fetched_again_before_next_update(server, stores, ca):
    start = datetime.now(UTC)
    server.body = ca.crl(last_update=start - timedelta(hours=1),
                         next_update=start + timedelta(hours=3))
    store = CrlStore([server.url], [ca.cert])
    stores.append(store)
    await store.refresh(now=start)
    await store.refresh(now=start + timedelta(minutes=30))
    assert server.requests == 1  # not due yet
    await store.refresh(now=start + timedelta(hours=2, minutes=1))
    assert server.requests == 2  # three quarters into the CRL's four hours
    await store.refresh(force=True)
    assert server.requests == 3


async def test_long_lived_crl_fetched_hourly(server, stores, ca):
    start = datetime.now(UTC)
    server.body = ca.crl(next_update=start + timedelta(days=30))
    store = CrlStore([server.url], [ca.cert])
    stores.append(store)
    await store.refresh(now=start)
    await store.refresh(now=start + timedelta(minutes=59))
    assert server.requests == 1
    await store.refresh(now=start + timedelta(minutes=61))
    assert server.requests == 2


async def test_failed_download_is_retried_with_backoff(server, stores, ca):
    start = datetime.now(UTC)
    server.status = 503
    store = CrlStore([server.url], [ca.cert], poll=60)
    stores.append(store)
    await store.refresh(now=start)
    await store.refresh(now=start + timedelta(seconds=30))
    assert server.requests == 1
    await store.refresh(now=start + timedelta(seconds=61))
    assert server.requests == 2
    await store.refresh(now=start + timedelta(seconds=61 + 100))
    assert server.requests == 2  # second failure: two polls
    await store.refresh(now=start + timedelta(seconds=61 + 121))
    assert server.requests == 3


async def test_changed_file_is_read_again(tmp_path, ca):
    path = tmp_path / "issuing.crl"
    path.write_bytes(ca.crl())
    store = CrlStore([str(path)], [ca.cert])
    await store.refresh()
    before = numbers(store)
    ca.revoke(ca.issue(ADDRESS))
    path.write_bytes(ca.crl())
    os.utime(path, (1, 1))  # a different mtime even within one clock tick
    await store.refresh()
    assert numbers(store) == [before[0] + 1]


async def test_missing_file_is_reported(tmp_path, caplog):
    store = CrlStore([str(tmp_path / "nowhere" / "*.crl")])
    with caplog.at_level(logging.WARNING, logger="gateway.directory.crl"):
        await store.refresh()
    assert store.current() == []
    assert "nowhere" in caplog.text


async def test_ensure_loaded_loads_once(server, stores, ca):
    server.body = ca.crl()
    store = CrlStore([server.url], [ca.cert])
    stores.append(store)
    await asyncio.gather(store.ensure_loaded(), store.ensure_loaded())
    await store.ensure_loaded()
    assert server.requests == 1
    assert len(store.current()) == 1


async def test_run_keeps_refreshing(tmp_path, ca):
    path = tmp_path / "issuing.crl"
    store = CrlStore([str(path)], [ca.cert], poll=0.01)
    task = asyncio.create_task(store.run())
    try:
        await asyncio.sleep(0.05)
        assert store.current() == []
        path.write_bytes(ca.crl())
        # Each round reads and checks the files in a thread: on busy cores, more than 1 s.
        await eventually(store.current, "the new CRL loaded")
        assert len(store.current()) == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_crl_is_indexed_by_serial_and_answers_only_for_its_signer(tmp_path, ca):
    leaf, other = ca.issue(ADDRESS), ca.issue("someone@example.dk")
    when = NOW - timedelta(days=3)
    ca.revoke(leaf, when)
    (tmp_path / "ca.crl").write_bytes(ca.crl())
    store = CrlStore([str(tmp_path / "ca.crl")], [ca.cert])
    await store.refresh()
    indexed = store.indexed()
    key = ca.cert.public_key()
    revoked = indexed.status(leaf.cert.serial_number, ca.cert.subject, key, NOW)
    assert revoked is not None and revoked.revoked and revoked.date == when.replace(microsecond=0)
    assert indexed.status(other.cert.serial_number, ca.cert.subject, key, NOW).revoked is False
    # Signed by another key, of another issuer, or not current: not for the index to say.
    stranger = CA("Stranger CA")
    assert indexed.status(leaf.cert.serial_number, ca.cert.subject,
                          stranger.cert.public_key(), NOW) is None
    assert indexed.status(leaf.cert.serial_number, stranger.cert.subject, key, NOW) is None
    assert indexed.status(leaf.cert.serial_number, ca.cert.subject, key,
                          NOW + timedelta(days=30)) is None
