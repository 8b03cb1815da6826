"""Fixtures every layer shares: a real PostgreSQL, started when a test first needs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import postgres
from tests.support.postgres import Postgres


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
