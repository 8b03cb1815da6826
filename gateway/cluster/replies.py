"""The reply-routing map in the cluster database: a reply finds its person on any node.

The same ReplyMap the files implementation fulfils (gateway.inbound.replies): the node
that sends a secure mail for a `replies = "department"` department remembers its
Message-ID and sender; the partner's reply may reach any node, which asks the database.
As with the files, only the SHA-256 of the Message-ID is kept, never the identifier, and
entries older than the retention period no longer count and are pruned. Nothing is
cached: a reply must see a mail sent a moment ago on another node. The database being
unreachable makes the map ReplyMapUnavailable: the reply waits in the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from psycopg import AsyncConnection

from gateway.cluster import DatabaseUnavailable
from gateway.cluster.database import Database
from gateway.inbound.replies import ReplyMapUnavailable, Sent, message_digest, message_key


class DatabaseReplyMap:
    """ReplyMap in the `reply_routes` table (schema.py)."""

    def __init__(self, database: Database, retention: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.retention = retention
        self.clock = clock

    async def remember(self, message_id: str, sent: Sent) -> None:
        if not message_key(message_id):
            return
        values = (message_digest(message_id), sent.sender, sent.department, sent.sent)
        await self._run(lambda conn: conn.execute(
            "INSERT INTO reply_routes (message_key, sender, department, sent_at) "
            "VALUES (%s, %s, %s, to_timestamp(%s)) ON CONFLICT (message_key) DO UPDATE "
            "SET sender = excluded.sender, department = excluded.department, "
            "sent_at = excluded.sent_at", values))

    async def find(self, message_ids: Sequence[str]) -> Sent | None:
        """The entry of the first of `message_ids` that is known and not expired."""
        keys = [message_digest(m) for m in message_ids if message_key(m)]
        if not keys:
            return None
        oldest = self.clock() - self.retention

        async def first(conn: AsyncConnection) -> Sent | None:
            cursor = await conn.execute(
                "SELECT r.sender, r.department, extract(epoch FROM r.sent_at)::float8 "
                "FROM unnest(%s::bytea[]) WITH ORDINALITY AS wanted(key, position) "
                "JOIN reply_routes r ON r.message_key = wanted.key "
                "WHERE r.sent_at >= to_timestamp(%s) ORDER BY wanted.position LIMIT 1",
                (keys, oldest))
            row = await cursor.fetchone()
            return Sent(row[0], row[1], float(row[2])) if row else None

        return await self._run(first)

    async def prune(self) -> int:
        """Forget the entries past the retention period; how many went."""
        async def delete(conn: AsyncConnection) -> int:
            cursor = await conn.execute(
                "DELETE FROM reply_routes WHERE sent_at < to_timestamp(%s)",
                (self.clock() - self.retention,))
            return cursor.rowcount

        return await self._run(delete)

    async def close(self) -> None:
        """The database belongs to the daemon, which closes it."""

    async def _run(self, work):
        try:
            return await self.database.run(work)
        except DatabaseUnavailable as e:
            raise ReplyMapUnavailable(f"cluster database {e}") from None
