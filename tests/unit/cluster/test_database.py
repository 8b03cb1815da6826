"""The shared database's pool and schema against a real PostgreSQL: migrate, race, heal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import REGISTRY

from gateway.cluster import DatabaseUnavailable
from gateway.cluster.database import Database
from gateway.cluster.schema import Migration, current_version
from tests.support.postgres import ROLE_PASSWORD, Postgres

USERS = Migration(1, "users", ("CREATE TABLE users (name text PRIMARY KEY)",))
# Slow enough that two nodes migrating without the lock would both try CREATE TABLE.
SLOW_USERS = Migration(1, "users", ("SELECT pg_sleep(0.3)",
                                    "CREATE TABLE users (name text PRIMARY KEY)"))
ROLES = Migration(2, "roles", ("CREATE TABLE roles (name text PRIMARY KEY)",
                               "ALTER TABLE users ADD COLUMN role text REFERENCES roles"))
BROKEN = Migration(2, "broken", ("CREATE TABLE roles (name text PRIMARY KEY)",
                                 "ALTER TABLE nowhere ADD COLUMN x text"))


def errors() -> float:
    return REGISTRY.get_sample_value("sendsikkert_cluster_database_errors_total") or 0.0


@pytest.fixture
async def opened() -> AsyncIterator[list[Database]]:
    """Databases a test opens; all are closed at the end."""
    dbs: list[Database] = []
    yield dbs
    for db in dbs:
        await db.close()


async def open_db(opened: list[Database], url: str, migrations=(USERS,), node: str = "node1",
                  password: str | None = ROLE_PASSWORD, patience: float = 2.0) -> Database:
    db = Database(url, password, node=node, migrations=migrations, timeout=patience)
    opened.append(db)
    await db.open()
    return db


async def query(db: Database, sql: str) -> list[tuple]:
    async def work(conn) -> list[tuple]:
        cursor = await conn.execute(sql)
        return [tuple(row) for row in await cursor.fetchall()]
    return await db.run(work)


async def versions(db: Database) -> list[tuple]:
    return await query(db, "SELECT version, description, applied_by FROM sendsikkert_schema "
                           "ORDER BY version")


async def test_the_schema_is_created_once_and_recorded(opened, database_url):
    db = await open_db(opened, database_url)
    assert await db.wait_ready(10)
    assert db.problem() is None
    assert await versions(db) == [(1, "users", "node1")]
    again = await open_db(opened, database_url, node="node2")
    assert await again.wait_ready(10)
    assert await versions(again) == [(1, "users", "node1")]  # nothing applied twice


async def test_nodes_starting_together_do_not_race(opened, database_url):
    dbs = [await open_db(opened, database_url, (SLOW_USERS,), node=f"node{i}")
           for i in range(1, 4)]
    assert all(await asyncio.gather(*(db.wait_ready(10) for db in dbs)))
    [(version, _, by)] = await versions(dbs[0])
    assert version == 1 and by in ("node1", "node2", "node3")
    assert all(db.problem() is None for db in dbs)


async def test_a_newer_gateway_migrates_further(opened, database_url):
    assert await (await open_db(opened, database_url, (USERS,))).wait_ready(10)
    newer = await open_db(opened, database_url, (USERS, ROLES), node="node2")
    assert await newer.wait_ready(10)
    assert [v for v, _, _ in await versions(newer)] == [1, 2]
    # An older node in a rolling upgrade carries on with the newer schema.
    older = await open_db(opened, database_url, (USERS,), node="node3")
    assert await older.wait_ready(10)
    assert await older.run(current_version) == 2


async def test_a_failing_migration_leaves_nothing_behind(opened, database_url):
    db = await open_db(opened, database_url, (USERS, BROKEN))
    assert not await db.wait_ready(1.5)
    assert "nowhere" in (db.problem() or "")
    with pytest.raises(DatabaseUnavailable, match="not ready"):
        await db.ping()
    fixed = await open_db(opened, database_url, (USERS,), node="node2")
    assert await fixed.wait_ready(10)
    # BROKEN's first statement was rolled back with the rest.
    assert await query(fixed, "SELECT to_regclass('roles') IS NULL") == [(True,)]


async def test_a_wrong_password_is_named(opened, database_url):
    db = await open_db(opened, database_url, password="wrong")
    assert not await db.wait_ready(1.5)
    assert "password authentication failed" in (db.problem() or "")


def test_a_password_in_the_url_is_refused(database_url):
    with pytest.raises(ValueError, match="password"):
        Database(database_url.replace("gateway@", "gateway:secret@"), None, node="n")


# Outages: a server of their own, so that stopping it disturbs no other test.
@pytest.fixture
def outage_pg(private_pg: Postgres) -> Postgres:
    return private_pg


@pytest.fixture
def outage_url(outage_pg: Postgres) -> Iterator[str]:
    yield outage_pg.url(outage_pg.create_database())
    outage_pg.resume()
    outage_pg.start()


async def wait_healed(db: Database, seconds: float) -> float:
    """Ping until it works; how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            await db.ping()
            return time.monotonic() - started
        except DatabaseUnavailable:
            await asyncio.sleep(0.2)
    raise AssertionError(f"not healed within {seconds} s: {db.problem()}")


@pytest.mark.serial
async def test_a_node_starts_without_the_database_and_heals(opened, outage_pg, outage_url):
    outage_pg.stop()
    before = errors()
    started = time.monotonic()
    db = await open_db(opened, outage_url)
    assert time.monotonic() - started < 1  # open() never waits for the database
    with pytest.raises(DatabaseUnavailable):
        await db.ping()
    assert not await db.wait_ready(1)
    assert "refused" in (db.problem() or "").lower()
    assert errors() > before
    outage_pg.start()
    assert await db.wait_ready(15)
    await wait_healed(db, 10)
    assert db.problem() is None


@pytest.mark.serial
async def test_a_database_that_goes_away_fails_fast_and_comes_back(opened, outage_pg,
                                                                  outage_url):
    db = await open_db(opened, outage_url)
    assert await db.wait_ready(10)
    await db.ping()
    outage_pg.stop()
    with pytest.raises(DatabaseUnavailable):
        await db.ping()
    problem = db.problem()
    assert problem
    started = time.monotonic()
    for _ in range(20):  # within the fail-fast second: no waiting
        with pytest.raises(DatabaseUnavailable):
            await db.ping()
    assert time.monotonic() - started < 0.5
    outage_pg.start()
    assert await wait_healed(db, 15) < 15
    assert db.problem() is None


@pytest.mark.serial
async def test_a_hung_database_times_out(opened, outage_pg, outage_url):
    db = await open_db(opened, outage_url, patience=1.0)
    assert await db.wait_ready(10)
    outage_pg.pause()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        await db.ping()
    assert time.monotonic() - started < 2
    outage_pg.resume()
    await wait_healed(db, 15)
