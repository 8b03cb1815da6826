"""How many SMTP connections the edge holds: in all, and per client address.

Past `smtp.max_connections` or `smtp.max_connections_per_client` a new connection gets
`421 4.7.0` and is closed before the greeting (RFC 5321 3.8, 4.2.3), like Postfix's
smtpd_client_connection_count_limit. The counts are the whole gateway's: with several
worker processes they sit in a table the workers share (gateway/edge/counts.py).
"""

from __future__ import annotations

from typing import Protocol

from gateway.edge.counts import LocalCounts

TOO_MANY = "421 4.7.0 {host} Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 {host} Too many connections from your address, try again later"


class Counts(Protocol):
    def total(self) -> int: ...
    def of(self, client: str) -> int: ...
    def add(self, client: str, delta: int) -> None: ...


class ConnectionLimits:
    """Counts open connections; `admit` and `release` pair up for every admitted one."""

    def __init__(self, hostname: str, max_connections: int, max_per_client: int,
                 counts: Counts | None = None) -> None:
        self.hostname = hostname
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.counts = counts or LocalCounts()

    def admit(self, client: str) -> str | None:
        """None when `client` may have one more connection, else the 421 to send."""
        if self.counts.total() >= self.max_connections:
            return TOO_MANY.format(host=self.hostname)
        if self.counts.of(client) >= self.max_per_client:
            return TOO_MANY_FROM_YOU.format(host=self.hostname)
        self.counts.add(client, 1)
        return None

    def release(self, client: str) -> None:
        self.counts.add(client, -1)
