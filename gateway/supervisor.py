"""The supervisor: one daemon to its operators, several worker processes underneath.

`send-sikkert serve` runs this. It holds the spool lock for every worker, hands the
messages of spool partitions no worker will own to those that will, makes sure each
listen address can be had, then starts `spool.workers` workers (gateway/worker.py) that
share the SMTP port through SO_REUSEPORT, each receiving into and delivering from its
own part of the spool. The supervisor serves the HTTP API itself, so it answers while
a worker restarts: check, health, readiness (workers included), the metrics of every
process added up, and queue administration passed to the worker that owns the message.
A worker that dies is started again and picks its messages up. SIGHUP is checked here
first and then passed to every worker; SIGTERM stops the workers (each finishes or
requeues what it is delivering) and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.api.http import make_app
from gateway.api.tls import HttpsContext, https_context
from gateway.app import (
    LoadedPolicy,
    close_policy,
    load_policy,
    report_policy,
    switch_policy,
    watch_sepo,
    worker_count,
)
from gateway.cluster import open_database
from gateway.config import Config, ConfigError, load
from gateway.control import SupervisorEnd, WorkerGone, WorkerUnavailable
from gateway.edge import counts
from gateway.model import Envelope
from gateway.observe import metrics, multiprocess
from gateway.policy.classify import Classifier
from gateway.policy.sepo import SepoWatch
from gateway.signals import DaemonSignals
from gateway.spool import admin, durable, partitions
from gateway.spool.store import Spool, SpoolBusy

if TYPE_CHECKING:
    from gateway.cluster.database import Database

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0  # seconds for a worker to load its policy and spool and listen
STOP_TIMEOUT = 90.0  # a worker's scheduler gives deliveries in flight 30 s
RESTART_MIN, RESTART_MAX = 1.0, 30.0  # back-off between restarts of a failing worker


@dataclass
class WorkerProcess:
    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: SupervisorEnd | None = None
    ready: bool = False
    reload_pending: bool = False  # a SIGHUP came while it started: sent once it is ready
    started: float = 0.0
    restarts: int = 0
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts, watches and stops the workers; serves the HTTP API for all of them."""

    def __init__(self, config: Config, loaded: LoadedPolicy, argv: list[str],
                 database: Database | None = None) -> None:
        self.config = config
        self.loaded = loaded
        self.database = database  # for /api/check and /readyz; each worker has its own
        self.spool = Spool(config.spool.dir)  # the root: the lock and every partition
        self.argv = argv  # our own command line, repeated for the workers
        self.workers = [WorkerProcess(i) for i in range(worker_count(config))]
        self.http: web.AppRunner | None = None
        self.https: HttpsContext | None = None
        self._reserved: list[socket.socket] = []
        self._counts_fd = counts.create_table(len(self.workers))  # open connections, shared
        self._stopping = False
        self._sepo_task: asyncio.Task[None] | None = None
        report_policy(loaded)

    @property
    def classifier(self) -> Classifier:
        return self.loaded.policy.classifier

    async def start(self) -> None:
        """Lock, rebalance, reserve the ports, start every worker, then open the HTTP API."""
        try:
            await asyncio.to_thread(self.spool.lock)
        except SpoolBusy as e:
            raise ConfigError(self.config.path, "spool.dir", str(e)) from None
        multiprocess.clear_stale(self.config.spool.dir)
        if durable.effective(self.config.spool.sync) != self.config.spool.sync:
            log.warning("spool.sync = %s needs syncfs on Linux 5.8 or later: each message "
                        "file is fsynced instead", self.config.spool.sync)
        await asyncio.to_thread(partitions.rebalance, self.config.spool.dir, len(self.workers))
        self._reserve_ports()
        try:
            await asyncio.gather(*(self._launch(w) for w in self.workers))
        except WorkerGone as e:
            await self.stop()
            raise ConfigError(self.config.path, "", f"a worker could not start: {e}") from None
        for w in self.workers:
            w.watcher = asyncio.get_running_loop().create_task(self._watch(w))
        if self.database is not None:
            await self.database.open()
        if self.loaded.directory is not None:
            await self.loaded.directory.start()
        self._sepo_task = asyncio.get_running_loop().create_task(
            watch_sepo(self, SepoWatch(self.config.path)))
        if self.config.http.listen is not None:
            self.https = https_context(self.config)
            self.http = web.AppRunner(make_app(self), access_log=None)
            await self.http.setup()
            site = web.TCPSite(self.http, self.config.http.listen.host,
                               self.config.http.listen.port,
                               ssl_context=self.https.context if self.https else None)
            try:
                await site.start()
            except OSError as e:
                await self.stop()
                raise ConfigError(self.config.path, "http.listen",
                                  f"cannot listen on {self.config.http.listen}: {e.strerror}"
                                  ) from None
        log.info("%d worker(s) listening on %s; HTTP%s on %s", len(self.workers),
                 ", ".join(str(listen) for listen in self.config.smtp.listen),
                 "S" if self.https else "", self.config.http.listen or "-")

    def _reserve_ports(self) -> None:
        """Bind every SMTP address (SO_REUSEPORT, not listening) so a clash is one clear error.

        The sockets stay bound while the daemon runs: no other program takes the port
        while a worker restarts.
        """
        for listen in self.config.smtp.listen:
            try:
                infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
                for family, kind, proto, _, address in infos:
                    # First without SO_REUSEPORT: a port any other program holds, another
                    # send-sikkert included (same user), is refused, never shared.
                    with socket.socket(family, kind, proto) as probe:
                        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        _v6only(probe, family)
                        probe.bind(address)
                    s = socket.socket(family, kind, proto)
                    self._reserved.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    _v6only(s, family)
                    s.bind(address)
            except OSError as e:
                for s in self._reserved:
                    s.close()
                raise ConfigError(self.config.path, "smtp.listen",
                                  f"cannot listen on {listen}: {e.strerror}") from None

    async def _launch(self, w: WorkerProcess) -> None:
        """Start one worker and wait until it listens; WorkerGone if it ends first."""
        ours, theirs = socket.socketpair()
        lock_fd = self.spool.lock_fd
        assert lock_fd is not None
        command = [sys.executable, "-m", "gateway", *self.argv, "--worker", str(w.index),
                   "--workers", str(len(self.workers)), "--control-fd", str(theirs.fileno()),
                   "--counts-fd", str(self._counts_fd), "--parent", str(os.getpid())]
        # A new worker starts with no connections: clear what a dead one left counted.
        counts.SharedCounts(self._counts_fd, len(self.workers), w.index).clear_row()
        w.proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL,
            pass_fds=(theirs.fileno(), lock_fd, self._counts_fd))
        theirs.close()
        w.channel = SupervisorEnd(ours)
        w.started = time.monotonic()
        ended = asyncio.ensure_future(w.proc.wait())
        ready = asyncio.ensure_future(w.channel.wait_ready())
        done, _ = await asyncio.wait({ended, ready}, timeout=READY_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready in done and ready.exception() is None:
            ended.cancel()
            w.ready = True
            if w.reload_pending:  # it may have read the configuration before the change
                w.reload_pending = False
                w.proc.send_signal(signal.SIGHUP)
            return
        ready.cancel()
        if ended not in done:
            w.proc.kill()
        status = await w.proc.wait()
        ended.cancel()
        w.channel.close()
        raise WorkerGone(f"worker {w.index} exited with status {status} before it was ready")

    async def _watch(self, w: WorkerProcess) -> None:
        """Start the worker again whenever it dies, backing off while it keeps failing."""
        while True:
            assert w.proc is not None
            status = await w.proc.wait()
            w.ready = False
            if w.channel is not None:
                w.channel.close()
            multiprocess.process_dead(w.proc.pid)
            if self._stopping:
                return
            ran = time.monotonic() - w.started
            w.restarts = 0 if ran > 60 else w.restarts + 1
            delay = min(RESTART_MAX, RESTART_MIN * 2 ** w.restarts) if w.restarts else 0.0
            log.error("worker %d (pid %d) exited with status %s; starting it again%s",
                      w.index, w.proc.pid, status, f" in {delay:.0f} s" if delay else "")
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._launch(w)
                log.info("worker %d is back (pid %d)", w.index, w.proc.pid)
            except WorkerGone as e:
                log.error("%s", e)

    # What the HTTP API asks (api/http.py).

    def readiness_problems(self) -> list[str]:
        return [f"worker {w.index} is not running (restarting)" for w in self.workers
                if not w.ready]

    def render_metrics(self) -> bytes:
        return multiprocess.render()

    async def queue_envelopes(self) -> list[Envelope]:
        """Every message of every partition, read from disk (the workers keep it current);
        a record that cannot be read is logged and left to the workers' next start."""
        found = await asyncio.to_thread(partitions.scan, self.config.spool.dir)
        for record, error in found.unreadable.items():
            log.warning("queue listing: cannot read spool record %s: %s", record, error)
        return found.envelopes

    async def retry(self, queue_id: str | None = None) -> bool:
        """Pass `queue retry` to the worker owning the message (to every worker without id)."""
        if queue_id is None:
            for w in self.workers:
                if w.ready:
                    await self._ask(w, {"op": "retry", "id": None})
            return True
        w = await self._owner(queue_id)
        return w is not None and bool((await self._ask(w, {"op": "retry", "id": queue_id}))
                                      .get("found"))

    async def delete(self, queue_id: str) -> bool:
        """Pass `queue delete` to the worker owning the message; admin.Busy if it is busy."""
        w = await self._owner(queue_id)
        if w is None:
            return False
        answer = await self._ask(w, {"op": "delete", "id": queue_id})
        if "busy" in answer:
            raise admin.Busy(answer["busy"])
        return bool(answer.get("found"))

    async def _owner(self, queue_id: str) -> WorkerProcess | None:
        found = await asyncio.to_thread(partitions.owner, self.config.spool.dir, queue_id)
        if found is None or found[0] is None or found[0] >= len(self.workers):
            return None
        return self.workers[found[0]]

    async def _ask(self, w: WorkerProcess, request: dict[str, Any]) -> dict[str, Any]:
        if not w.ready or w.channel is None:
            raise WorkerUnavailable(f"worker {w.index} is restarting; try again in a moment")
        try:
            answer = await w.channel.ask(request)
        except (WorkerGone, TimeoutError) as e:
            raise WorkerUnavailable(f"worker {w.index} did not answer: {e}") from None
        if "error" in answer:
            raise WorkerUnavailable(f"worker {w.index}: {answer['error']}")
        return answer

    # Signals.

    async def reload(self) -> None:
        """SIGHUP: check the new configuration here; only a good one reaches the workers."""
        try:
            config = await asyncio.to_thread(load, self.config.path)
            loaded = await load_policy(config, database=self.database)
        except ConfigError as e:
            _refused(e)
            return
        try:
            if self.https is not None and config.http.tls is not None:
                # On the loop's own thread: handshakes use this context meanwhile.
                self.https.reload(config.http.tls.cert, config.http.tls.key)
        except ConfigError as e:
            await close_policy(loaded)  # never started; its connections would leak
            _refused(e)
            return
        if (config.http.tls is None) != (self.config.http.tls is None):
            log.warning("http.tls switched on or off: it takes effect after a restart")
        old = self.loaded
        self.config, self.loaded = config, loaded
        await switch_policy(old, loaded)
        for w in self.workers:
            if w.proc is None or w.proc.returncode is not None:
                continue
            if w.ready:
                w.proc.send_signal(signal.SIGHUP)
            else:  # still loading: SIGHUP's default action would end it
                w.reload_pending = True
        log.info("reloaded %s: %d SEPO domain(s), %d department(s)", config.path,
                 len(loaded.sepo), len(loaded.policy.departments))

    async def stop(self) -> None:
        """Close the API, stop every worker gracefully, release the port and the lock."""
        self._stopping = True
        if self._sepo_task is not None:
            self._sepo_task.cancel()
        if self.http is not None:
            await self.http.cleanup()
        running = [w.proc for w in self.workers if w.proc and w.proc.returncode is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        if running:
            _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running],
                                         timeout=STOP_TIMEOUT)
            for proc in running:
                if proc.returncode is None:
                    log.error("worker pid %d did not stop in %.0f s; killing it", proc.pid,
                              STOP_TIMEOUT)
                    proc.kill()
                    await proc.wait()
        for w in self.workers:
            if w.watcher is not None:
                await asyncio.gather(w.watcher, return_exceptions=True)
            if w.channel is not None:
                w.channel.close()
        for s in self._reserved:
            s.close()
        os.close(self._counts_fd)
        if self.loaded.directory is not None:
            await self.loaded.directory.close()
        if self.loaded.policy.replies is not None:
            await self.loaded.policy.replies.close()
        if self.database is not None:
            await self.database.close()
        multiprocess.remove()
        log.info("stopped")


def _v6only(s: socket.socket, family: int) -> None:
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


async def serve(config: Config, argv: list[str]) -> int:
    """Run the daemon until SIGTERM or SIGINT; 0 on a clean stop."""
    signals = DaemonSignals(asyncio.get_running_loop())
    database = open_database(config)
    loaded = await load_policy(config, database=database)
    supervisor = Supervisor(config, loaded, argv, database)
    await supervisor.start()
    reloads = asyncio.create_task(signals.reloads(supervisor.reload))
    log.info("send-sikkert ready")
    await signals.stop.wait()
    log.info("stopping")
    reloads.cancel()
    await supervisor.stop()
    return 0


def _refused(error: ConfigError) -> None:
    metrics.last_reload_successful.labels(source="configuration").set(0)
    log.error("reload refused, keeping the running configuration: %s", error)
