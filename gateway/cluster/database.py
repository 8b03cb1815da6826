"""One node's connection pool to the shared PostgreSQL database, and its health.

psycopg 3's asyncio pool on the daemon's loop. open() never waits for the database: the
pool connects and the schema is migrated (`schema.py`) in the background, retried until it
works, so a node starts and accepts mail while the database is away. Every use goes
through run(), which bounds it by `timeout`, turns every way of failing (refused,
timed out, dropped mid-query, not migrated yet) into DatabaseUnavailable, counts it in
`sendsikkert_cluster_database_errors_total` and remembers why for /readyz. After a
failure, uses fail at once for a second rather than each waiting out the timeout; the
pool keeps reconnecting, so the node heals by itself when the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.cluster import DatabaseUnavailable
from gateway.cluster.schema import MIGRATIONS, Migration, migrate
from gateway.observe import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

# psycopg_pool warns at every failed reconnection attempt; one line per outage is ours.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

FAIL_FAST = 1.0  # seconds after a failure in which uses fail without trying
MIGRATE_RETRY = (0.5, 10.0)  # first and longest pause between migration attempts

_FAILURES = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)


class Database:
    """The pool, the background migration and what went wrong last."""

    def __init__(self, url: str, password: str | None, *, node: str, timeout: float = 3.0,
                 pool_size: int = 4, migrations: Sequence[Migration] = MIGRATIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if "password" in conninfo_to_dict(url):
            raise ValueError("the database URL holds a password; give it from a file or "
                             "the environment instead")
        self.url, self.node, self.timeout = url, node, timeout
        self._migrations = tuple(migrations)
        self._clock = clock
        self._problem: str | None = "not connected yet"
        self._connect_error: str | None = None  # the pool's last failed connection attempt
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._schema_ready = asyncio.Event()
        self._migrator: asyncio.Task[None] | None = None
        self._abandoned: set[asyncio.Task[Any]] = set()
        recorder = self._connect_failed  # None: a connection attempt succeeded
        kwargs: dict[str, Any] = {
            "application_name": f"send-sikkert {node}"[:63],
            "connect_timeout": max(2, int(timeout)),
            # The server gives up on a statement that outlives the client's patience.
            "options": f"-c statement_timeout={int(timeout * 1000)}",
        }
        if password is not None:
            kwargs["password"] = password

        class _Connection(psycopg.AsyncConnection):  # type: ignore[type-arg]
            """Remembers why the pool's background connection attempts fail."""

            @classmethod
            async def connect(cls, *args: Any, **kw: Any):  # type: ignore[override]
                try:
                    connection = await super().connect(*args, **kw)
                except psycopg.Error as e:
                    recorder(e)
                    raise
                recorder(None)
                return connection

        self._pool = AsyncConnectionPool(
            url, kwargs=kwargs, connection_class=_Connection, min_size=1,
            max_size=pool_size, open=False, timeout=timeout,
            check=AsyncConnectionPool.check_connection,  # drop connections of a restarted server
            reconnect_timeout=max(5.0, 2 * timeout), name=f"cluster-{node}")

    async def open(self) -> None:
        """Start connecting and migrating in the background; returns at once."""
        await self._pool.open(wait=False)
        if self._migrator is None:
            self._migrator = asyncio.create_task(self._migrate_until_done(),
                                                 name="cluster-migrate")

    async def wait_ready(self, seconds: float) -> bool:
        """Wait up to `seconds` for the schema; False if it is not ready by then."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._schema_ready.wait()
        return self._schema_ready.is_set()

    async def _migrate_until_done(self) -> None:
        pause, longest = MIGRATE_RETRY
        while True:
            try:
                version = await self._run(
                    lambda conn: migrate(conn, self.node, self._migrations), self.timeout * 3)
            except DatabaseUnavailable:
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)
                continue
            self._schema_ready.set()
            log.info("cluster database ready (schema version %d)", version)
            return

    async def run(self, work: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
        """`work` on a pooled connection, within `timeout`; else DatabaseUnavailable."""
        if not self._schema_ready.is_set():
            self._count()
            raise DatabaseUnavailable(f"not ready: {self.problem() or 'schema not migrated'}")
        if self._clock() < self._retry_at:
            self._count()
            raise DatabaseUnavailable(self.problem() or "unreachable")
        return await self._run(work, self.timeout)

    async def _run(self, work: Callable[[psycopg.AsyncConnection], Awaitable[T]],
                   seconds: float) -> T:
        async def unit() -> T:
            async with self._pool.connection() as conn:
                return await work(conn)

        # In a task of its own: psycopg answers a cancelled query by waiting up to ten
        # seconds for the server to confirm, which must not hold up a lookup. A task that
        # outlives the timeout is cancelled and left to finish in the background.
        task = asyncio.create_task(unit())
        try:
            async with asyncio.timeout(seconds):
                result = await asyncio.shield(task)
        except (TimeoutError, asyncio.CancelledError) as e:
            self._abandon(task)
            if isinstance(e, asyncio.CancelledError):
                raise
            self._failed(e)
            raise DatabaseUnavailable(self.problem() or "no answer in time") from None
        except _FAILURES as e:  # QueryCanceled (statement_timeout) is an OperationalError
            self._failed(e)
            raise DatabaseUnavailable(self.problem() or "unreachable") from None
        except psycopg.Error as e:
            if self._schema_ready.is_set():
                raise  # a mistake in our SQL, not an outage
            self._failed(e)  # a migration that fails: logged, retried, shown in /readyz
            raise DatabaseUnavailable(self.problem() or str(e)) from None
        self._succeeded()
        return result

    def _abandon(self, task: asyncio.Task[Any]) -> None:
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless a query goes through now (for /readyz)."""
        await self.run(lambda conn: conn.execute("SELECT 1"))

    def problem(self) -> str | None:
        """Why the database could not be used last, while it still cannot; else None."""
        if self._problem is None:
            return None
        return self._connect_error or self._problem

    def _connect_failed(self, error: psycopg.Error | None) -> None:
        self._connect_error = None if error is None else _describe(error)

    def _count(self) -> None:
        metrics.cluster_database_errors.inc()

    def _failed(self, error: BaseException) -> None:
        self._count()
        # The pool only says it timed out; the reason is in its last connection attempt.
        timed_out = isinstance(error, PoolTimeout | TimeoutError)
        self._problem = (self._connect_error if timed_out else None) or _describe(error)
        self._retry_at = self._clock() + FAIL_FAST
        if self._down_since is None:
            self._down_since = self._clock()
            log.error("cluster database unusable: %s; lookups that need it answer "
                      "unknown until it is back", self._problem)

    def _succeeded(self) -> None:
        if self._down_since is not None:
            log.info("cluster database usable again after %.0f s",
                     self._clock() - self._down_since)
        self._down_since = None
        self._problem = self._connect_error = None

    async def close(self) -> None:
        if self._migrator is not None:
            self._migrator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._migrator
        if self._abandoned:
            await asyncio.wait(self._abandoned, timeout=self.timeout)
        await self._pool.close(timeout=self.timeout)


def _describe(error: BaseException) -> str:
    """One line: psycopg's messages run over several, with hints we do not need."""
    if isinstance(error, PoolTimeout | TimeoutError):
        return "no answer in time"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

