"""The learnt certificates in the cluster database: what one node learns, every node uses.

The same LearntStore the files implementation fulfils (gateway.directory.learnt): the
directory consults it beside its backend and validates what it returns at every lookup,
and the Learner validates a certificate before it is added. Rows are keyed by address and
the certificate's SHA-256, so learning one twice, or two nodes learning it at once, keeps
one row; the subject, serial and expiry sit beside the DER for an operator's SELECT.

Lookups are cached in this process for `cache_ttl` seconds, found and not found alike:
a certificate learnt on another node counts here that many seconds later at most, and
one learnt here at once (add() forgets the address's cached answer). The database being
unreachable makes a lookup DirectoryUnavailable, so the class is `unknown`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

from cryptography import x509
from psycopg import AsyncConnection

from gateway.cluster import DatabaseUnavailable
from gateway.cluster.database import Database
from gateway.directory import DirectoryUnavailable
from gateway.directory.cache import LookupCache
from gateway.directory.validate import address_key, certificate_info

CACHE_TTL = 5.0  # seconds; the most a node lags behind another's learning
CACHE_SIZE = 10_000


class DatabaseLearntStore:
    """LearntStore in the `learnt_certificates` table (schema.py)."""

    backend = "learnt"

    def __init__(self, database: Database, *, cache_ttl: float = CACHE_TTL,
                 cache_size: int = CACHE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.database = database
        self._cache = LookupCache(cache_ttl, cache_ttl, cache_size, clock)

    async def lookup(self, address: str) -> list[bytes]:
        """The address's certificates, then the CA certificates stored with them."""
        key = address_key(address)
        cached = self._cache.get(key)
        if cached is not None:
            return cached

        async def read(conn: AsyncConnection) -> list[tuple[bytes, list[bytes]]]:
            cursor = await conn.execute(
                "SELECT certificate, chain FROM learnt_certificates WHERE address = %s "
                "ORDER BY learnt_at, fingerprint", (key,))
            return [(bytes(cert), [bytes(c) for c in chain])
                    for cert, chain in await cursor.fetchall()]

        try:
            rows = await self.database.run(read)
        except DatabaseUnavailable as e:
            raise DirectoryUnavailable(f"learnt certificates: cluster database {e}") from None
        leaves = list(dict.fromkeys(cert for cert, _ in rows))
        cas = [c for c in dict.fromkeys(c for _, chain in rows for c in chain)
               if c not in leaves]
        found = leaves + cas
        self._cache.put(key, found)
        return found

    async def add(self, address: str, certificate: bytes, chain: Sequence[bytes],
                  note: str) -> bool:
        """Keep the certificate for the address; False when it was kept already."""
        key = address_key(address)
        cert = x509.load_der_x509_certificate(certificate)
        info = certificate_info(cert)
        values = (key, hashlib.sha256(certificate).digest(), certificate, list(chain),
                  info.subject, info.serial, cert.not_valid_after_utc, note,
                  self.database.node)

        async def insert(conn: AsyncConnection) -> bool:
            cursor = await conn.execute(
                "INSERT INTO learnt_certificates (address, fingerprint, certificate, chain, "
                "subject, serial, not_after, note, learnt_by) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (address, fingerprint) DO NOTHING RETURNING true", values)
            return await cursor.fetchone() is not None

        try:
            added = await self.database.run(insert)
        except DatabaseUnavailable as e:
            raise DirectoryUnavailable(f"learnt certificates: cluster database {e}") from None
        self._cache.forget(key)
        return added

    async def ping(self) -> None:
        """Never fails: the database's health is /readyz's warning, not the directory's.

        Every node shares it; taking them all out of the balancer for it would only stop
        mail that does not need it.
        """

    async def close(self) -> None:
        """The database belongs to the daemon, which closes it; only the cache goes."""
        self._cache.clear()
