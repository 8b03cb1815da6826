"""One worker process: a Gateway (SMTP + delivery) on its own part of the spool.

The supervisor starts each worker as `send-sikkert serve --worker N` in a fresh
interpreter, with its end of a private control socket and the spool lock's descriptor
inherited, and PROMETHEUS_MULTIPROC_DIR set so every metric lands in the shared folder.
A worker dies with its supervisor (PR_SET_PDEATHSIG), so a killed daemon never leaves
workers behind that hold the lock or the port. SIGHUP reloads, SIGTERM stops gracefully;
the supervisor sends both.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
from typing import Any

from gateway.app import Gateway, load_policy
from gateway.cluster import open_database
from gateway.config import Config
from gateway.control import Request, serve_worker_end
from gateway.edge.counts import SharedCounts
from gateway.observe import maillog
from gateway.signals import DaemonSignals
from gateway.spool import admin
from gateway.spool.partitions import partition_dir
from gateway.spool.store import Spool

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when the supervisor ends, however it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before we asked
        os._exit(1)


async def run(config: Config, index: int, workers: int, control_fd: int, counts_fd: int,
              parent: int) -> int:
    """Run worker `index` of `workers` until SIGTERM or until the supervisor is gone."""
    die_with_parent(parent)
    maillog.per_turn(asyncio.get_running_loop())  # at exit logging writes what waits
    signals = DaemonSignals(asyncio.get_running_loop())
    database = open_database(config)
    loaded = await load_policy(config, database=database)
    spool = Spool(partition_dir(config.spool.dir, index), config.spool.sync)
    gateway = Gateway(config, loaded, spool, workers, database,
                      SharedCounts(counts_fd, workers, index))
    await gateway.start()
    loop = asyncio.get_running_loop()

    async def handle(request: Request) -> dict[str, Any]:
        queue_id = request.get("id")
        if request.get("op") == "retry":
            return {"found": gateway.retry(queue_id)}
        if request.get("op") == "delete":
            try:
                return {"found": await gateway.delete(str(queue_id))}
            except admin.Busy as e:
                return {"busy": str(e)}
        return {"error": f"unknown request {request.get('op')!r}"}

    reloads = loop.create_task(signals.reloads(gateway.reload))
    ready = asyncio.Event()
    channel = loop.create_task(serve_worker_end(socket.socket(fileno=control_fd), handle, ready))
    channel.add_done_callback(lambda _: signals.stop.set())  # the supervisor went away
    ready.set()
    await signals.stop.wait()
    reloads.cancel()
    await gateway.stop()
    channel.cancel()
    maillog.per_turn(None)
    return 0
