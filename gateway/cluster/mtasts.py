"""The MTA-STS policy cache in the cluster database: one fetch serves every node.

The same PolicyStore the files implementation fulfils (gateway.delivery.mtasts): a policy
fetched by one node is found by the others, kept for its `max_age` (RFC 8461 5.1) beside
the TXT `id` it was fetched under, in the versioned JSON form the files hold. The
service in front keeps a valid policy in each process's memory, so the database is asked
when a domain is new to a process, its policy expires, or its `id` changes; answers are
also cached here for a few seconds, since most domains publish no policy at all and the
service then asks at every lookup. The database being unreachable makes the store
StoreUnavailable: a recipient whose class depends on it is `unknown`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from gateway.cluster import DatabaseUnavailable
from gateway.cluster.database import Database
from gateway.delivery.mtasts import CachedPolicy, StoreUnavailable

log = logging.getLogger(__name__)

CACHE_TTL = 5.0  # seconds an answer (a policy or none) is kept in this process


class DatabasePolicyStore:
    """PolicyStore in the `mta_sts_policies` table (schema.py)."""

    def __init__(self, database: Database, *, cache_ttl: float = CACHE_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.database = database
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, CachedPolicy | None]] = {}

    async def load(self, domain: str) -> CachedPolicy | None:
        """The policy last saved for `domain`, expired or not; None when there is none."""
        domain = domain.lower()
        now = self.clock()
        hit = self._cache.get(domain)
        if hit is not None and now < hit[0]:
            return hit[1]

        async def read(conn: AsyncConnection) -> dict | None:
            cursor = await conn.execute(
                "SELECT policy FROM mta_sts_policies WHERE domain = %s", (domain,))
            row = await cursor.fetchone()
            return row[0] if row else None

        try:
            record = await self.database.run(read)
        except DatabaseUnavailable as e:
            raise StoreUnavailable(f"cluster database {e}") from None
        entry = None
        if record is not None:
            try:
                entry = CachedPolicy.from_json(record)
            except ValueError as e:
                log.warning("ignoring the unreadable MTA-STS policy of %s in the cluster "
                            "database: %s", domain, e)
        if entry is not None and entry.domain != domain:
            entry = None
        self._remember(domain, entry)
        return entry

    async def save(self, entry: CachedPolicy) -> None:
        """Keep `entry` for its domain, replacing what was there."""
        values = (entry.domain, Jsonb(entry.to_json()),
                  datetime.fromtimestamp(entry.fetched, UTC),
                  datetime.fromtimestamp(entry.expires, UTC), self.database.node)
        try:
            await self.database.run(lambda conn: conn.execute(
                "INSERT INTO mta_sts_policies (domain, policy, fetched_at, expires_at, "
                "saved_by) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (domain) DO UPDATE SET "
                "policy = excluded.policy, fetched_at = excluded.fetched_at, "
                "expires_at = excluded.expires_at, saved_by = excluded.saved_by", values))
        except DatabaseUnavailable as e:
            raise StoreUnavailable(f"cluster database {e}") from None
        self._remember(entry.domain, entry)

    def _remember(self, domain: str, entry: CachedPolicy | None) -> None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[domain] = (self.clock() + self.cache_ttl, entry)
