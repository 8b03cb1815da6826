"""How many SMTP connections the edge holds: in all, and per client address.

Past `smtp.max_connections` or `smtp.max_connections_per_client` a new connection gets
`421 4.7.0` and is closed before the greeting (RFC 5321 3.8, 4.2.3), like Postfix's
smtpd_client_connection_count_limit. The counts are this process's own: each worker
process of the daemon holds its share of the listeners' connections.
"""

from __future__ import annotations

from collections import Counter

TOO_MANY = "421 4.7.0 {host} Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 {host} Too many connections from your address, try again later"


class ConnectionLimits:
    """Counts open connections; `admit` and `release` pair up for every admitted one."""

    def __init__(self, hostname: str, max_connections: int, max_per_client: int) -> None:
        self.hostname = hostname
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.open: Counter[str] = Counter()
        self.total = 0

    def admit(self, client: str) -> str | None:
        """None when `client` may have one more connection, else the 421 to send."""
        if self.total >= self.max_connections:
            return TOO_MANY.format(host=self.hostname)
        if self.open[client] >= self.max_per_client:
            return TOO_MANY_FROM_YOU.format(host=self.hostname)
        self.open[client] += 1
        self.total += 1
        return None

    def release(self, client: str) -> None:
        self.total -= 1
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]
