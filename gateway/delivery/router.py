"""Send each delivery to the transport for its route kind: smtp, mx or file.

The one Transport the scheduler's pipeline holds. An unexpected error in a transport
becomes 451 4.3.0 for every recipient (RFC 3463): the message waits, nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.delivery import Rcpt, Result, Route, TlsPolicy, Transport, same_reply
from gateway.delivery.file import FileTransport
from gateway.delivery.mtasts.service import MtaSts
from gateway.delivery.mx import MxResolver, MxTransport
from gateway.delivery.resolver import DnsResolver
from gateway.delivery.smtp import SmtpTransport
from gateway.errors import Reply
from gateway.spool.body import MessageData

log = logging.getLogger(__name__)


class Router:
    """Dispatches by `route.kind`; builds its transports from the delivery settings."""

    def __init__(self, *, hostname: str, resolver: DnsResolver | None = None,
                 mx_port: int = 25, timeout: float = 60, connect_timeout: float = 30,
                 mta_sts: MtaSts | None = None) -> None:
        smtp = SmtpTransport(hostname, timeout=timeout, connect_timeout=connect_timeout)
        mx = MxTransport(smtp, MxResolver(resolver or DnsResolver()), port=mx_port,
                         mta_sts=mta_sts)
        self.transports: dict[str, Transport] = {"smtp": smtp, "mx": mx, "file": FileTransport()}

    async def close(self) -> None:
        """Close the SMTP sessions kept open for the next message (at shutdown)."""
        await self.transports["smtp"].sessions.close()  # type: ignore[attr-defined]

    async def deliver(self, route: Route, domain: str, sender: str, rcpts: Sequence[Rcpt],
                      data: MessageData, tls: TlsPolicy, *, queue_id: str, ret: str = "",
                      envid: str = "", smtputf8: bool = False) -> Result:
        """Deliver once through the transport for `route`."""
        try:
            return await self.transports[route.kind].deliver(
                route, domain, sender, rcpts, data, tls, queue_id=queue_id, ret=ret,
                envid=envid, smtputf8=smtputf8)
        except Exception:
            log.exception("%s: delivery via %s failed unexpectedly", queue_id, route)
            return same_reply(rcpts, Reply(451, "4.3.0", f"internal error delivering via {route}"))
