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


class DatabaseUnavailable(Exception):
    """The shared database could not answer (down, unreachable, too slow, not migrated)."""
