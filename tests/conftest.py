"""Fixtures every layer shares: a real PostgreSQL, started when a test first needs it; and
the `serial` mark (tests/support/serial.py) for runs on several xdist workers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.cluster.database import Database
from tests.support import postgres, serial
from tests.support.postgres import ROLE_PASSWORD, OpenNode, Postgres

_run_lock = pytest.StashKey["serial.RunLock | None"]()


def _controller(config: pytest.Config) -> bool:
    """This process hands out the tests of an xdist run."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(
        config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if _controller(config):
        # The controller names the run, so that it can remove the run's files after.
        config.option.testrunuid = config.option.testrunuid or uuid.uuid4().hex
    config.stash[_run_lock] = serial.lock_for_this_process()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _controller(config):
        serial.remove_files(config.option.testrunuid)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`serial` tests last, in their order: after the rest, nothing waits for them."""
    items.sort(key=lambda item: item.get_closest_marker(serial.MARK) is not None)
    serial.name_serial_tests(i.nodeid for i in items if i.get_closest_marker(serial.MARK))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist loadfile` (scripts/test) with the serial tests as one unit at the end."""
    return serial.FileScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Setup, call and teardown of each test under the run's lock (shared, or exclusive
    for a `serial` test), fixtures of wider scope included."""
    lock = item.config.stash[_run_lock]
    if lock is None:
        return (yield)
    with lock.hold(item.get_closest_marker(serial.MARK) is not None):
        return (yield)


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
