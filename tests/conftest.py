"""Fixtures every layer shares: a real PostgreSQL, started once when a test first needs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import postgres
from tests.support.postgres import Postgres


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    if not postgres.available():
        pytest.fail("PostgreSQL 15 server binaries are missing: run scripts/setup --test")
    server = Postgres().init()
    yield server
    server.destroy()


@pytest.fixture
def database_url(pg: Postgres) -> str:
    """A fresh empty database, as `cluster.database` would name it."""
    return pg.url(pg.create_database())
