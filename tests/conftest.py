"""Fixtures every layer shares: a real PostgreSQL, started when a test first needs it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.cluster.database import Database
from tests.support import postgres
from tests.support.postgres import ROLE_PASSWORD, OpenNode, Postgres


def _server() -> Iterator[Postgres]:
    if not postgres.available():
        pytest.fail("PostgreSQL 15 server binaries are missing: run scripts/setup --test")
    server = Postgres().init()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    """One server for the whole run; tests that only use it share it."""
    yield from _server()


@pytest.fixture(scope="module")
def private_pg() -> Iterator[Postgres]:
    """A server of the test module's own, for tests that stop, freeze or restart it."""
    yield from _server()


@pytest.fixture
def database_url(pg: Postgres) -> str:
    """A fresh empty database, as `cluster.database` would name it."""
    return pg.url(pg.create_database())


@pytest.fixture
async def open_node(database_url: str) -> AsyncIterator[OpenNode]:
    """`await open_node("node1")`: one node's pool on the test's database, schema migrated.

    Several calls are several nodes of one cluster; all are closed at the end.
    """
    opened: list[Database] = []

    async def open_one(node: str = "node1", url: str = database_url,
                       patience: float = 2.0) -> Database:
        db = Database(url, ROLE_PASSWORD, node=node, timeout=patience)
        opened.append(db)
        await db.open()
        assert await db.wait_ready(15), db.problem()
        return db

    yield open_one
    for db in opened:
        await db.close()
