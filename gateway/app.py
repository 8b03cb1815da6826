"""Wiring: build the parts from the configuration, start them on one event loop, stop them.

`Gateway` is what one worker process runs: the SMTP listeners (aiosmtpd on
`loop.create_server`, the port shared with the other workers by SO_REUSEPORT), and the
scheduler with its delivery attempts for the worker's own part of the spool. The
supervisor (`gateway/supervisor.py`) starts the workers and serves the HTTP API;
`gateway/worker.py` runs one Gateway under it. SIGHUP reloads the configuration, SEPO
list, departments and directory, and the SEPO list is also re-read when its file
changes; SIGTERM stops gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.bounce import owed
from gateway.cluster import mta_sts_store
from gateway.config import Config, ConfigError, load
from gateway.delivery import Router
from gateway.delivery.security import TransportParts, open_transport_security
from gateway.directory.learnt import Learner, open_store
from gateway.directory.service import CertificateDirectory, open_directory
from gateway.edge.handler import Handler
from gateway.edge.limits import ConnectionLimits, Counts
from gateway.edge.protocol import GatewaySMTP
from gateway.edge.proxy import ProxyPolicy
from gateway.edge.tls import server_context
from gateway.inbound.cms import KeyHolder
from gateway.inbound.receive import Receiver
from gateway.inbound.replies import open_reply_map
from gateway.model import Envelope
from gateway.observe import metrics
from gateway.pipeline import Pipeline, Policy
from gateway.policy.classify import Classifier
from gateway.policy.departments import load_departments
from gateway.policy.dlp.scan import Scanner, limits_from
from gateway.policy.routing import Routing
from gateway.policy.sepo import SepoList, SepoWatch, load_sepo
from gateway.spool import admin
from gateway.spool.scheduler import Scheduler
from gateway.spool.store import Spool

if TYPE_CHECKING:
    from gateway.cluster.database import Database

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0  # seconds between prunings of the reply map


@dataclass
class LoadedPolicy:
    """Everything SIGHUP reloads, loaded and checked before it replaces the old one."""

    policy: Policy
    sepo: SepoList
    directory: CertificateDirectory | None
    transport: TransportParts


async def load_policy(config: Config, with_departments: bool = True,
                      database: Database | None = None) -> LoadedPolicy:
    """Read the SEPO list, departments and certificate directory; ConfigError when bad.

    `check` classifies without the departments, so it runs without access to their keys.
    With `database` (`cluster.database`) the shared stores live in it.
    """
    sepo = load_sepo(config.sepo.list, config.path)
    departments = ()
    if with_departments:
        departments = await asyncio.to_thread(load_departments, config.departments,
                                              str(config.path))
    learnt = open_store(config, database)
    directory = open_directory(config.directory, config_file=config.path, learnt=learnt)
    transport = open_transport_security(config, mta_sts_store(database))
    classifier = Classifier(config.organisation.internal_domains, sepo, directory,
                            transport.lookup,
                            Routing(config.routes, config.organisation.internal_domains))
    validator = directory.validator if directory is not None else None
    receiver = Receiver(
        [KeyHolder(d.id, d.certificate, d.key) for d in departments], validator,
        Learner(learnt, validator) if learnt is not None and validator is not None else None,
        decrypt=config.inbound.decrypt, tag_header=config.tags.header)
    policy = Policy(classifier, departments, receiver, open_reply_map(config, database))
    return LoadedPolicy(policy, sepo, directory, transport)


def inbound_tls(config: Config) -> ssl.SSLContext | None:
    tls = config.smtp.tls
    if tls is None:
        return None
    try:
        return server_context(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(config.path, "smtp.tls.cert", f"cannot load {tls.cert}: {e}") from None


def proxy_policy(config: Config) -> ProxyPolicy | None:
    """The load balancers whose PROXY header is read; None: `smtp.proxy_protocol` is off."""
    if not config.smtp.proxy_protocol:
        return None
    return ProxyPolicy(config.smtp.trusted_proxies)


def _router(config: Config, loaded: LoadedPolicy) -> Router:
    return Router(hostname=config.smtp.hostname, resolver=loaded.transport.resolver,
                  mx_port=config.routes.mx_port, mta_sts=loaded.transport.mta_sts)


class HoldsPolicy(Protocol):
    config: Config
    loaded: LoadedPolicy



async def watch_sepo(holder: HoldsPolicy, watch: SepoWatch) -> None:
    """Re-read the SEPO list when its file changes: operators replace it from cron.

    Each worker and the supervisor (for /api/check) watch it on their own.
    """
    while True:
        await asyncio.sleep(holder.config.sepo.watch_interval or 5)
        if not holder.config.sepo.watch_interval:
            continue  # switched off (it can be switched on again by SIGHUP)
        current = holder.loaded.sepo
        new = await asyncio.to_thread(watch.poll, current)
        if new is not None and holder.loaded.sepo is current:  # no SIGHUP came between
            holder.loaded.sepo = new
            holder.loaded.policy.classifier.sepo = new
            metrics.sepo_domains.set(len(new))


async def switch_policy(old: LoadedPolicy, new: LoadedPolicy) -> None:
    """After a good reload: start the new policy's directory, close the old one's parts."""
    if new.directory is not None:
        await new.directory.start()
    await close_policy(old)
    report_policy(new)


async def close_policy(loaded: LoadedPolicy) -> None:
    """Close a policy's directory and reply map: one replaced, or one a reload refused."""
    if loaded.directory is not None:
        await loaded.directory.close()
    if loaded.policy.replies is not None:
        await loaded.policy.replies.close()


def report_policy(loaded: LoadedPolicy) -> None:
    """The gauges of the policy in force: read at start, or after a good reload."""
    metrics.sepo_domains.set(len(loaded.sepo))
    for source in ("configuration", "sepo"):
        metrics.last_reload_successful.labels(source=source).set(1)


def worker_count(config: Config) -> int:
    """`spool.workers`, where 0 means one worker per CPU."""
    return config.spool.workers or os.cpu_count() or 1


class Gateway:
    """One worker: receives into and delivers from its own part of the spool."""

    def __init__(self, config: Config, loaded: LoadedPolicy, spool: Spool,
                 workers: int = 1, database: Database | None = None,
                 counts: Counts | None = None) -> None:
        self.config = config
        self.loaded = loaded
        self.spool = spool
        self.database = database  # the worker's own connections, opened in start()
        self.counts = counts  # open connections of all workers (None: this one alone)
        # The hop's limits hold for the gateway as a whole: each worker takes its share.
        self.concurrency = math.ceil(config.queue.concurrency / workers)
        self.transport = _router(config, loaded)
        self.scanner = Scanner(limits_from(config.dlp), workers=config.dlp.workers)
        self.handler = Handler(self.spool, config.smtp.relay_networks, config.tags,
                               self.enqueue, loaded.policy.departments,
                               inbound=config.inbound.enabled,
                               internal_domains=config.organisation.internal_domains)
        self.proxy = proxy_policy(config)
        self.scheduler: Scheduler | None = None
        self.pipeline: Pipeline | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self._scheduler_task: asyncio.Task[None] | None = None
        self._sepo_watch = SepoWatch(config.path)
        self._sepo_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        report_policy(loaded)

    @property
    def classifier(self) -> Classifier:
        return self.loaded.policy.classifier

    def enqueue(self, envelope: Envelope) -> None:
        assert self.scheduler is not None
        self.scheduler.add(envelope)

    async def start(self) -> None:
        """Pick up the spool, listen, then deliver: nothing is sent before the start succeeded.

        The supervisor holds the spool lock for every worker.
        """
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.spool.prepare)
        if self.database is not None:
            await self.database.open()  # connects and migrates in the background
        self.pipeline = Pipeline(self.config, self.spool, self.loaded.policy, self.transport,
                                 self.enqueue, scanner=self.scanner)
        self.scheduler = Scheduler(self.spool, self.pipeline.attempt, self.config.queue,
                                   concurrency=self.concurrency)
        recovered = await asyncio.to_thread(self.spool.load_all)
        for env in recovered:
            if owed.owes_dsn(env):
                await self._settle(env)
                if env.done:  # removed, or its debt stands for the next start
                    continue
            self.scheduler.add(env)  # its pending recipients are delivered as ever
        if recovered:
            log.info("picked up %d message(s) from the spool", len(recovered))
        handler = self.handler
        tls = inbound_tls(self.config)
        smtp = self.config.smtp

        limits = ConnectionLimits(smtp.hostname, smtp.max_connections,
                                  smtp.max_connections_per_client, self.counts)

        def protocol() -> GatewaySMTP:
            return GatewaySMTP(handler, hostname=smtp.hostname, ident="send-sikkert ESMTP",
                               data_size_limit=smtp.max_message_size, enable_SMTPUTF8=True,
                               decode_data=False, tls_context=tls,
                               require_starttls=bool(smtp.tls and smtp.tls.require), loop=loop,
                               timeout=smtp.timeout, limits=limits, proxy=self.proxy)

        for listen in smtp.listen:
            try:
                server = await loop.create_server(protocol, listen.host, listen.port,
                                                  reuse_port=True)
            except OSError as e:
                raise ConfigError(self.config.path, "smtp.listen",
                                  f"cannot listen on {listen}: {e.strerror}") from None
            self.servers.append(server)
            log.debug("SMTP listening on %s", listen)
        if self.loaded.directory is not None:
            await self.loaded.directory.start()
        self._scheduler_task = loop.create_task(self.scheduler.run())
        self._sepo_task = loop.create_task(self._watch_sepo())
        self._prune_task = loop.create_task(self._prune_replies())

    async def _watch_sepo(self) -> None:
        await watch_sepo(self, self._sepo_watch)

    def retry(self, queue_id: str | None = None) -> bool:
        """`queue retry`: make one message (or all) due now; False for an unknown id."""
        return self.scheduler is not None and self.scheduler.retry(queue_id)

    async def _prune_replies(self) -> None:
        """Forget the reply map's entries past `inbound.reply_retention`, hourly."""
        while True:
            replies = self.loaded.policy.replies
            if replies is not None:
                try:
                    await replies.prune()
                except Exception:  # the task must outlive any one bad round
                    log.exception("pruning the reply map failed")
            await asyncio.sleep(PRUNE_INTERVAL)

    async def delete(self, queue_id: str) -> bool:
        """`queue delete`: drop a message and tell its sender; False for an unknown id."""
        assert self.scheduler is not None
        env = self.scheduler.messages.get(queue_id)
        if env is None:
            return False
        if self.scheduler.busy(queue_id):
            raise admin.Busy(f"{queue_id} is being delivered right now; try again")
        self.scheduler.forget(queue_id)
        for dsn in await admin.delete(self.spool, self.config, env):
            self.enqueue(dsn)
        return True

    async def _settle(self, env: Envelope) -> None:
        """An outcome a crash left untold (a bounce, a deletion...): its sender is told
        before anything else is done with the message."""
        try:
            dsns = await owed.settle(self.spool, self.config, env)
        except Exception:  # one record must not stop the start; it is settled at the next
            log.exception("%s: cannot queue the DSN it owes; it is tried again at the next "
                          "start", env.id)
            return
        for dsn in dsns:
            self.enqueue(dsn)

    async def reload(self) -> None:
        """SIGHUP: re-read the configuration and policy; keep the old ones if anything is bad.

        Listeners and the spool folder stay as they are until a restart (the supervisor
        looks after the HTTP listener).
        """
        try:
            config = await asyncio.to_thread(load, self.config.path)
            loaded = await load_policy(config, database=self.database)
        except ConfigError as e:
            metrics.last_reload_successful.labels(source="configuration").set(0)
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        for key in ("smtp.listen", "smtp.hostname", "smtp.max_message_size", "smtp.tls",
                    "http.listen", "spool.dir", "spool.workers", "spool.sync",
                    "cluster.database", "cluster.node"):
            section, name = key.split(".")
            if getattr(getattr(config, section), name) != getattr(getattr(self.config, section),
                                                                 name):
                log.warning("%s changed: it takes effect after a restart", key)
        old = self.loaded
        self.config, self.loaded = config, loaded
        self.transport = _router(config, loaded)
        self.scanner.limits = limits_from(config.dlp)
        self.handler.relay_networks = config.smtp.relay_networks
        self.proxy = proxy_policy(config)
        self.handler.tags = config.tags
        self.handler.departments = loaded.policy.departments
        self.handler.inbound = config.inbound.enabled
        self.handler.internal_domains = config.organisation.internal_domains
        if self.pipeline is not None:
            self.pipeline.reconfigure(config, loaded.policy, self.transport)
        if self.scheduler is not None:
            self.scheduler.queue = config.queue
        await switch_policy(old, loaded)
        log.debug("reloaded %s", config.path)  # the supervisor says so once for all workers
        if self.scheduler is not None:
            self.scheduler.retry()

    async def stop(self) -> None:
        """Stop accepting, let attempts in flight finish, then close everything."""
        for server in self.servers:
            server.close()
        if self._sepo_task is not None:
            self._sepo_task.cancel()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self._scheduler_task is not None:
            await self._scheduler_task
        self.scanner.close()
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
        await self.transport.close()
        if self.loaded.directory is not None:
            await self.loaded.directory.close()
        if self.loaded.policy.replies is not None:
            await self.loaded.policy.replies.close()
        if self.database is not None:
            await self.database.close()
        log.debug("stopped")
