"""The shared database's schema, versioned, and the migration every node runs at start.

Each Migration is applied once, in version order, inside one transaction with the rows of
`sendsikkert_schema` recording what was applied, when and by which node: a failed
migration leaves nothing behind. A transaction-scoped advisory lock serialises nodes that
start together (the second waits, then finds nothing left to do), so the migration is
idempotent and race-free. A database already migrated further by a newer gateway (during
a rolling upgrade) is used as it is: migrations only ever add.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection

log = logging.getLogger(__name__)

# pg_advisory_xact_lock takes a bigint; this one is b"sndsikrt" read as a signed integer.
LOCK_KEY = int.from_bytes(b"sndsikrt", "big", signed=True)

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS sendsikkert_schema (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL
)"""


@dataclass(frozen=True)
class Migration:
    """One step of the schema; never edited once released, only followed by new ones."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "MTA-STS policy cache", (
        # One row per recipient domain: the policy as the files hold it (CachedPolicy's
        # versioned JSON), when it was fetched and until when it counts (RFC 8461 5.1).
        """CREATE TABLE mta_sts_policies (
            domain text PRIMARY KEY,
            policy jsonb NOT NULL,
            fetched_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL,
            saved_by text NOT NULL
        )""",
    )),
    Migration(2, "learnt certificates", (
        # One row per address and certificate (its SHA-256), the CA certificates that came
        # with it for path building, and what an operator needs to read and prune it.
        """CREATE TABLE learnt_certificates (
            address text NOT NULL,
            fingerprint bytea NOT NULL,
            certificate bytea NOT NULL,
            chain bytea[] NOT NULL,
            subject text NOT NULL,
            serial text NOT NULL,
            not_after timestamptz NOT NULL,
            note text NOT NULL,
            learnt_at timestamptz NOT NULL DEFAULT now(),
            learnt_by text NOT NULL,
            PRIMARY KEY (address, fingerprint)
        )""",
    )),
    Migration(3, "reply-routing map", (
        # The SHA-256 of a secure mail's Message-ID (never the identifier) -> its sender.
        """CREATE TABLE reply_routes (
            message_key bytea PRIMARY KEY,
            sender text NOT NULL,
            department text NOT NULL,
            sent_at timestamptz NOT NULL
        )""",
        "CREATE INDEX reply_routes_sent_at ON reply_routes (sent_at)",
    )),
)


async def current_version(conn: AsyncConnection) -> int:
    """The newest version applied (0 on an empty database)."""
    cursor = await conn.execute("SELECT to_regclass('sendsikkert_schema') IS NOT NULL")
    row = await cursor.fetchone()
    if not row or not row[0]:
        return 0
    cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM sendsikkert_schema")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: AsyncConnection, node: str,
                  migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply every migration newer than the database's version; return the version now."""
    latest = max((m.version for m in migrations), default=0)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        await conn.execute(BOOKKEEPING)
        version = await current_version(conn)
        if version > latest:
            log.warning("cluster database schema is at version %d, newer than this "
                        "gateway's %d: using it as it is", version, latest)
            return version
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version <= version:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO sendsikkert_schema (version, description, applied_by) "
                "VALUES (%s, %s, %s)", (migration.version, migration.description, node))
            log.info("cluster database schema migrated to version %d: %s",
                     migration.version, migration.description)
            version = migration.version
    return version
