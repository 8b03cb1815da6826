"""Queue a DSN: build the report and spool it from the null sender to the original sender.

The DSN then travels the normal routes like any other message (RFC 3464, RFC 5321 4.5.5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from gateway import rawmail
from gateway.bounce.dsn import Notice, build_dsn, is_global
from gateway.config import Config
from gateway.model import Envelope, RecipientState
from gateway.observe import maillog, metrics
from gateway.spool.store import Spool, new_id

log = logging.getLogger(__name__)


async def spool_dsn(spool: Spool, config: Config, env: Envelope, data: bytes,
                    notices: Sequence[Notice]) -> Envelope | None:
    """Spool one DSN about `notices`; None when the message had the null sender."""
    if not env.sender:
        log.warning("%s: no DSN for a message with the null sender", env.id)
        return None
    headers = rawmail.header_block(data)
    report = build_dsn(hostname=config.smtp.hostname, organisation=config.organisation.name,
                       queue_id=env.id, arrival=env.received, sender=env.sender,
                       original_headers=headers, notices=notices, envid=env.envid)
    dsn = Envelope(id=new_id(), sender="", recipients=[RecipientState(env.sender)],
                   received=time.time(), smtputf8=is_global(env.sender, headers, notices))
    await spool.put(dsn, report)
    metrics.dsn_sent.labels(action=notices[0].action).inc()
    maillog.dsn(env.id, dsn_id=dsn.id, action=notices[0].action, recipient=env.sender)
    return dsn
