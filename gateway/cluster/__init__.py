"""Several nodes as one service: the state every node must see the same, in PostgreSQL.

Each node keeps its own spool; with `cluster.database` the nodes share one database for
the learnt certificates, the reply-routing map and the MTA-STS policy cache, each behind
the same small interface its files implementation has. `database.py` holds the pool and
its health, `schema.py` the versioned schema the gateway migrates itself at start.

Accepting mail never depends on the database. A lookup that needs it while it cannot be
reached raises DatabaseUnavailable, which the callers turn into `unknown` (the mail
waits); the pool reconnects by itself once the database answers again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gateway.config import Config
from gateway.secret import read_secret

if TYPE_CHECKING:
    from gateway.cluster.database import Database
    from gateway.delivery.mtasts import PolicyStore
    from gateway.directory.learnt import LearntStore
    from gateway.inbound.replies import ReplyMap


class DatabaseUnavailable(Exception):
    """The shared database could not answer (down, unreachable, too slow, not migrated)."""


def database_password(config: Config) -> str | None:
    """The password from `database_password_file` or `_env`; None: the URL's own means."""
    cluster = config.cluster
    return read_secret(config.path, cluster.database_password_file,
                       cluster.database_password_env,
                       file_key="cluster.database_password_file",
                       env_key="cluster.database_password_env")


def open_database(config: Config) -> Database | None:
    """The database `cluster.database` names, with its password; None for a single node."""
    cluster = config.cluster
    if not cluster.database:
        return None
    password = database_password(config)
    # Imported here: psycopg takes a fifth of a second to load, which a single node skips.
    from gateway.cluster.database import Database

    return Database(cluster.database, password, node=cluster.node)


@contextlib.asynccontextmanager
async def connected(config: Config) -> AsyncIterator[Database | None]:
    """For a command (`check`, `certs import`): the database, given its timeout to connect.

    Past it the command goes on, and what needs the database answers unknown.
    """
    database = open_database(config)
    if database is None:
        yield None
        return
    await database.open()
    await database.wait_ready(database.timeout)
    try:
        yield database
    finally:
        await database.close()


def mta_sts_store(database: Database | None) -> PolicyStore | None:
    """The MTA-STS policy cache in the database; None: the files beside the spool."""
    if database is None:
        return None
    from gateway.cluster.mtasts import DatabasePolicyStore

    return DatabasePolicyStore(database)


def learnt_store(database: Database) -> LearntStore:
    """The learnt certificates in the database, instead of the `inbound.harvest` folder."""
    from gateway.cluster.certificates import DatabaseLearntStore

    return DatabaseLearntStore(database)


def reply_map(database: Database, retention: float) -> ReplyMap:
    """The reply-routing map in the database, instead of the `inbound.reply_map` folder."""
    from gateway.cluster.replies import DatabaseReplyMap

    return DatabaseReplyMap(database, retention)
