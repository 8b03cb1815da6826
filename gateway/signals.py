"""SIGTERM, SIGINT and SIGHUP for a daemon process, caught from its first moment.

A signal that comes while the daemon is still loading or starting its workers must not
meet the default action (SIGTERM kills with -15, SIGHUP too): `docker stop` right after
`docker start` would then lose the clean stop. A stop asked for during the start stops the
daemon as soon as it is up; a reload asked for then runs once it is up. Reloads run one
after the other, never two at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class DaemonSignals:
    """Catch the signals on `loop` now; `stop` is set by SIGTERM or SIGINT."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stop = asyncio.Event()
        self._reload = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)

    async def reloads(self, reload: Callable[[], Awaitable[None]]) -> None:
        """Run `reload` for every SIGHUP (several that come while one runs: once more)."""
        while True:
            await self._reload.wait()
            self._reload.clear()
            try:
                await reload()
            except Exception:  # a reload that fails keeps the daemon as it was
                log.exception("reload failed")
