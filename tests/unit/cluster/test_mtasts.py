"""The MTA-STS policy cache in PostgreSQL: one node's fetch is every node's policy."""

from __future__ import annotations

import pytest

from gateway.cluster.mtasts import DatabasePolicyStore
from gateway.delivery.mtasts import CachedPolicy, StoreUnavailable, StsPolicy
from tests.support.postgres import OpenNode, Postgres

ENFORCE = CachedPolicy("sts.test", "20260101", StsPolicy("enforce", 86400, ("mx.sts.test",)),
                       1_767_225_600.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_policy_saved_on_one_node_is_loaded_on_another(open_node: OpenNode):
    one = DatabasePolicyStore(await open_node("node1"))
    other = DatabasePolicyStore(await open_node("node2"))
    assert await other.load("sts.test") is None
    await one.save(ENFORCE)
    changed = CachedPolicy("sts.test", "20260202", StsPolicy("testing", 60, ()), 1_767_300_000.0)
    await one.save(changed)  # a new id replaces the old policy
    assert await DatabasePolicyStore(await open_node("node3")).load("STS.test") == changed


async def test_another_nodes_policy_counts_within_seconds(open_node: OpenNode):
    clock = Clock()
    one = DatabasePolicyStore(await open_node("node1"))
    other = DatabasePolicyStore(await open_node("node2"), cache_ttl=5, clock=clock)
    assert await other.load("sts.test") is None  # remembered for five seconds
    await one.save(ENFORCE)
    assert await other.load("sts.test") is None
    clock.now += 5
    assert await other.load("sts.test") == ENFORCE


async def test_a_record_this_version_cannot_read_is_ignored(open_node: OpenNode):
    db = await open_node()
    await db.run(lambda conn: conn.execute(
        "INSERT INTO mta_sts_policies VALUES ('odd.test', '{\"version\": 9}', now(), now(), "
        "'node0')"))
    assert await DatabasePolicyStore(db).load("odd.test") is None


async def test_without_the_database_the_store_is_unavailable(open_node: OpenNode,
                                                             private_pg: Postgres):
    store = DatabasePolicyStore(await open_node(url=private_pg.url(private_pg.create_database())))
    private_pg.stop()
    try:
        with pytest.raises(StoreUnavailable, match="cluster database"):
            await store.load("sts.test")
        with pytest.raises(StoreUnavailable, match="cluster database"):
            await store.save(ENFORCE)
    finally:
        private_pg.start()
