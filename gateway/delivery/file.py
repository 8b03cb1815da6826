"""Deliver into a folder: one `<queue-id>.<n>.eml` file per delivery, for the demo and debugging.

The envelope goes on top as `X-Envelope-From` and one `X-Envelope-To` per recipient
(CONTRACT "Route forms"). A file is created exclusively (never overwritten) and fsynced,
with its folder, before the delivery counts as done, as RFC 5321 6.1 asks of any MTA.
This is final delivery ("delivered" in RFC 3461 6.2), so no address is `dsn_relayed`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from gateway.delivery import Rcpt, Result, Route, TlsPolicy, same_reply
from gateway.errors import Reply
from gateway.spool.body import MessageData, whole

log = logging.getLogger(__name__)


class FileTransport:
    """Writes each delivered message as a file in the route's folder."""

    async def deliver(self, route: Route, domain: str, sender: str, rcpts: Sequence[Rcpt],
                      data: MessageData, tls: TlsPolicy, *, queue_id: str, ret: str = "",
                      envid: str = "", smtputf8: bool = False) -> Result:
        """Write the message once for all `rcpts`; a write error is 4.3.0 (try again later)."""
        if route.path is None or not queue_id or "/" in queue_id or queue_id.startswith("."):
            raise ValueError(f"cannot write {queue_id!r} to {route}")
        try:
            path = await asyncio.to_thread(write_message, route.path, queue_id, sender,
                                           [r.address for r in rcpts], await whole(data))
        except OSError as e:
            log.error("%s: cannot write to %s: %s", queue_id, route.path, e)
            return same_reply(rcpts, Reply(451, "4.3.0", "cannot write to the mail folder: "
                                                         f"{e.strerror or type(e).__name__}"))
        # The path is for the log (peer), never for the sender's DSN.
        return same_reply(rcpts, Reply(250, "2.0.0", "delivered to a mail folder"),
                          peer=str(path))


def write_message(folder: Path, queue_id: str, sender: str, recipients: Sequence[str],
                  data: bytes) -> Path:
    """Create the next free `<queue-id>.<n>.eml` in `folder` and make it durable."""
    folder.mkdir(parents=True, exist_ok=True)
    eol = b"\r\n" if b"\r\n" in data else b"\n"
    # The sender in angle brackets so that the null sender shows as "<>".
    envelope = [f"X-Envelope-From: <{sender}>".encode()]
    envelope += [f"X-Envelope-To: {addr}".encode() for addr in recipients]
    content = eol.join(envelope) + eol + data
    n = 1
    while True:
        path = folder / f"{queue_id}.{n}.eml"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            break
        except FileExistsError:
            n += 1
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)  # no half-written file looks like a delivery
        raise
    os.close(fd)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
