"""Outbound SMTP sessions kept open between messages to the same next hop.

A session that ended its transaction well is put aside for the next message to the same
host, port, certificate name and TLS policy, which resets it first (RSET, RFC 5321
4.1.1.5; in one write with its MAIL when the hop offers PIPELINING, RFC 2920), so
a busy hop costs one TCP and TLS handshake per connection instead of one per message,
as Postfix's connection cache does. A session is never shared across TLS policies or
names, carries at most `max_messages` messages and lives at most `max_age` seconds
(the hop's own limits are respected: a 421, a failed RSET or a closed connection drops
it), and is closed after `idle` seconds without work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import aiosmtplib


@dataclass(eq=False)
class Session:
    """One open session past EHLO (and STARTTLS when there was one)."""

    client: aiosmtplib.SMTP
    opened: float = field(default_factory=time.monotonic)
    messages: int = 0
    idle_timer: asyncio.TimerHandle | None = None


class SessionCache:
    """Idle sessions by next hop; take() one, give it back with release()."""

    def __init__(self, *, idle: float = 5.0, max_messages: int = 100,
                 max_age: float = 300.0) -> None:
        self.idle = idle
        self.max_messages = max_messages
        self.max_age = max_age
        self._idle: dict[Hashable, list[Session]] = {}

    def take(self, key: Hashable) -> Session | None:
        """An idle session for `key`, or None: then the caller opens a new one."""
        sessions = self._idle.get(key)
        while sessions:
            session = sessions.pop()
            if session.idle_timer is not None:
                session.idle_timer.cancel()
            if session.client.is_connected:
                return session
        return None

    async def release(self, key: Hashable, session: Session) -> None:
        """After a good transaction: keep it, or QUIT when it has done its share.

        The RSET between messages goes with the next one's commands (RFC 2920: in the
        same write as its MAIL when the hop offers PIPELINING)."""
        session.messages += 1
        worn = (session.messages >= self.max_messages
                or time.monotonic() - session.opened >= self.max_age)
        if worn or not session.client.is_connected:
            await close_politely(session.client)
            return
        loop = asyncio.get_running_loop()
        session.idle_timer = loop.call_later(self.idle, self._expire, key, session)
        self._idle.setdefault(key, []).append(session)

    def _expire(self, key: Hashable, session: Session) -> None:
        sessions = self._idle.get(key, [])
        if session in sessions:
            sessions.remove(session)
            asyncio.get_running_loop().create_task(close_politely(session.client))
        if not sessions:
            self._idle.pop(key, None)

    async def close(self) -> None:
        """QUIT every idle session (at shutdown)."""
        idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for session in sessions:
                if session.idle_timer is not None:
                    session.idle_timer.cancel()
        await asyncio.gather(*(close_politely(s.client) for ss in idle.values() for s in ss))


async def close_politely(client: aiosmtplib.SMTP) -> None:
    """QUIT politely, close regardless."""
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
        await client.quit(timeout=5)
    client.close()
