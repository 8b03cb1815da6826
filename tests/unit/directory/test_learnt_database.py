"""The learnt certificates in PostgreSQL (cluster.database): what one node learns, every
node uses. The CAs come from this folder's conftest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cluster.certificates import DatabaseLearntStore
from gateway.directory import DirectoryUnavailable
from gateway.directory.files import FilesSource
from gateway.directory.learnt import SIGNATURE, Learner
from gateway.directory.service import CertificateDirectory
from gateway.directory.validate import RecipientValidator
from gateway.model import RecipientClass
from tests.support.pki import CA, NOW
from tests.support.postgres import OpenNode, Postgres

ADDRESS = "ole@partner.dk"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def validator(root: CA) -> AsyncIterator[RecipientValidator]:
    made = RecipientValidator([root.cert])
    yield made
    made.close()


async def test_a_certificate_learnt_on_one_node_is_found_on_the_others(open_node: OpenNode,
                                                                      validator, inter):
    one = DatabaseLearntStore(await open_node("node1"))
    other = DatabaseLearntStore(await open_node("node2"))
    leaf = inter.issue(emails=[ADDRESS, "Ole.P@Partner.DK"])
    chain = [inter.cert.public_bytes(Encoding.DER)]
    learnt = await Learner(one, validator).learn(leaf.der, chain, SIGNATURE,
                                                 "signed mail from <ole@partner.dk>")
    assert learnt.ok and learnt.added == ("Ole.P@partner.dk", ADDRESS)
    assert await other.lookup(ADDRESS) == [leaf.der, *chain]
    assert await other.lookup("ole@PARTNER.dk") == [leaf.der, *chain]  # the domain's case
    assert await other.lookup("Ole.P@partner.dk") == [leaf.der, *chain]
    again = await Learner(other, validator).learn(leaf.der, chain, SIGNATURE, "again")
    assert again.known == ("Ole.P@partner.dk", ADDRESS) and again.added == ()


async def test_the_row_says_what_it_is_for_an_operator(open_node: OpenNode, root):
    db = await open_node("node1")
    leaf = root.issue(ADDRESS)
    await DatabaseLearntStore(db).add(ADDRESS, leaf.der, [], "certs import ole.pem")

    async def row(conn):
        cursor = await conn.execute("SELECT address, subject, serial, not_after, note, "
                                    "learnt_by, length(fingerprint) FROM learnt_certificates")
        return await cursor.fetchall()

    [(address, subject, serial, not_after, note, node, digest)] = await db.run(row)
    assert (address, note, node, digest) == (ADDRESS, "certs import ole.pem", "node1", 32)
    assert subject == leaf.cert.subject.rfc4514_string()
    assert int(serial, 16) == leaf.cert.serial_number
    assert not_after == leaf.cert.not_valid_after_utc


async def test_two_nodes_learning_the_same_certificate_at_once_keep_one(open_node, root):
    stores = [DatabaseLearntStore(await open_node(f"node{i}")) for i in range(1, 4)]
    leaf = root.issue(ADDRESS)
    added = await asyncio.gather(*(s.add(ADDRESS, leaf.der, [], "race") for s in stores))
    assert sorted(added) == [False, False, True]
    assert await stores[0].lookup(ADDRESS) == [leaf.der]


async def test_another_nodes_certificate_counts_within_seconds(open_node: OpenNode, root):
    clock = Clock()
    one = DatabaseLearntStore(await open_node("node1"))
    other = DatabaseLearntStore(await open_node("node2"), cache_ttl=5, clock=clock)
    assert await other.lookup(ADDRESS) == []  # "none" is remembered for five seconds
    leaf = root.issue(ADDRESS)
    assert await one.lookup(ADDRESS) == []
    await one.add(ADDRESS, leaf.der, [], "test")
    assert await one.lookup(ADDRESS) == [leaf.der]  # the learning node knows at once
    assert await other.lookup(ADDRESS) == []
    clock.now += 5
    assert await other.lookup(ADDRESS) == [leaf.der]


async def test_the_directory_on_another_node_sees_it_and_validates_it(open_node, validator,
                                                                    root, tmp_path):
    published = tmp_path / "published"
    published.mkdir()
    learning = DatabaseLearntStore(await open_node("node1"))
    elsewhere = CertificateDirectory(FilesSource(published), validator, "files",
                                     learnt=DatabaseLearntStore(await open_node("node2")))
    assert (await elsewhere.classify(ADDRESS)).cls == RecipientClass.UNSAFE
    newer = root.issue(ADDRESS, not_before=NOW - timedelta(days=1))
    await learning.add(ADDRESS, newer.der, [], "test")
    elsewhere.learnt = DatabaseLearntStore(await open_node("node3"))  # a fresh cache
    decision = await elsewhere.classify(ADDRESS)
    assert decision.cls == RecipientClass.SMIME and decision.certificate_der == newer.der
    assert decision.reason.endswith("(learnt)")


async def test_without_the_database_the_class_is_unknown(open_node, validator, root,
                                                        private_pg: Postgres, tmp_path):
    published = tmp_path / "published"
    published.mkdir()
    store = DatabaseLearntStore(await open_node(url=private_pg.url(private_pg.create_database())))
    directory = CertificateDirectory(FilesSource(published), validator, "files", learnt=store)
    private_pg.stop()
    try:
        decision = await directory.classify(ADDRESS)
        assert decision.cls == RecipientClass.UNKNOWN
        assert "learnt certificates: cluster database" in decision.reason
        with pytest.raises(DirectoryUnavailable):
            await store.add(ADDRESS, root.issue(ADDRESS).der, [], "test")
        await directory.ping()  # the outage is /readyz's warning, not the directory's
    finally:
        private_pg.start()
