"""The private channel between the supervisor and one worker: JSON lines on a socketpair.

The supervisor makes the pair and hands one end to the worker; nobody else can reach
it. The worker says `{"event": "ready"}` once it listens and delivers, then answers
one request at a time: `{"op": "retry", "id": ...}` and `{"op": "delete", "id": ...}`
(queue commands for the messages in its part of the spool). End of file means the
other side is gone.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

Request = dict[str, Any]
ANSWER_TIMEOUT = 30.0  # seconds; a delete may have to spool a DSN first
Handler = Callable[[Request], Awaitable[dict[str, Any]]]


class WorkerGone(Exception):
    """The worker closed its end (it exited or is restarting)."""


class WorkerUnavailable(Exception):
    """The worker that owns a message is not running right now: try again shortly."""


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


class SupervisorEnd:
    """The supervisor's end: waits for `ready`, then sends requests one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def wait_ready(self) -> None:
        """Until the worker says it is ready; WorkerGone when it ends before that."""
        self._reader, self._writer = await asyncio.open_connection(sock=self._sock)
        line = await self._reader.readline()
        if not line or json.loads(line).get("event") != "ready":
            raise WorkerGone("the worker ended before it was ready")

    async def ask(self, request: Request) -> dict[str, Any]:
        """Send one request and wait (ANSWER_TIMEOUT at most) for its answer."""
        if self._reader is None or self._writer is None:
            raise WorkerGone("the worker is not ready")
        async with self._lock:
            try:
                self._writer.write(_line(request))
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), ANSWER_TIMEOUT)
            except (OSError, ConnectionError) as e:
                raise WorkerGone(str(e)) from None
            if not line:
                raise WorkerGone("the worker closed the channel")
            return json.loads(line)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            self._sock.close()


async def serve_worker_end(sock: socket.socket, handle: Handler,
                           ready: asyncio.Event) -> None:
    """The worker's end: say ready once `ready` is set, then answer until end of file."""
    reader, writer = await asyncio.open_connection(sock=sock)
    await ready.wait()
    writer.write(_line({"event": "ready"}))
    await writer.drain()
    try:
        while line := await reader.readline():
            try:
                answer = await handle(json.loads(line))
            except Exception as e:  # one bad request must not end the channel
                answer = {"error": f"{type(e).__name__}: {e}"}
            writer.write(_line(answer))
            await writer.drain()
    finally:
        writer.close()
