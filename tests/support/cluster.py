"""Several gateway nodes as one service on one machine: the cluster scenarios' fixture.

Three `send-sikkert serve` processes, each with its own spool, ports and `cluster.node`,
sharing one configuration's substance (the same department key, SEPO list, trust
anchors and routes) and one PostgreSQL database; a real HAProxy in front of their SMTP
ports sends the PROXY protocol (v2) from 127.0.0.9, the one trusted proxy. Clients reach
the service at `cluster.port`, as Exchange would reach the balancer.
"""

from __future__ import annotations

import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.daemon import Daemon, GatewayConfig
from tests.support.haproxy import HAProxy
from tests.support.pki import CA
from tests.support.postgres import ROLE_PASSWORD, Postgres

BALANCER = "127.0.0.9"


@dataclass
class Cluster:
    """The nodes, the balancer and the database; `start()` brings them all up."""

    root: Path
    ca: CA
    pg: Postgres
    routes: dict[str, str]  # "internal", "default" -> route
    relay_networks: list[str]
    size: int = 3
    extra: str = ""  # more configuration, the same on every node
    replies: str = "person"  # the department's `replies`
    nodes: list[Daemon] = field(default_factory=list)
    balancer: HAProxy | None = None

    def __post_init__(self) -> None:
        self.database = self.pg.create_database()
        self.password = self.root / "db-password"
        self.root.mkdir(parents=True, exist_ok=True)
        self.password.write_text(ROLE_PASSWORD + "\n")
        first: GatewayConfig | None = None
        for i in range(1, self.size + 1):
            config = GatewayConfig(self.root / f"node{i}", self.ca)
            if first is None:
                first = config
            else:  # every node signs and decrypts with the same department key
                shutil.copytree(first.certs, config.certs, dirs_exist_ok=True)
            config.internal_route = self.routes["internal"]
            config.default_route = self.routes["default"]
            config.relay_networks = self.relay_networks
            config.replies = self.replies
            config.smtp_extra = f'proxy_protocol = true\ntrusted_proxies = ["{BALANCER}/32"]'
            config.extra = f"""
{self.extra}
[cluster]
database = "{self.pg.url(self.database)}"
database_password_file = "{self.password}"
node = "node{i}"
"""
            self.nodes.append(Daemon(config))

    @property
    def port(self) -> int:
        assert self.balancer is not None
        return self.balancer.port

    def start(self) -> Cluster:
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # as a rollout would
            list(pool.map(lambda node: node.start(timeout=90), self.nodes))
        self.balancer = HAProxy(self.root / "haproxy",
                                [("127.0.0.1", n.config.smtp_port) for n in self.nodes],
                                source=BALANCER).start()
        return self

    def kill(self, index: int) -> None:
        """SIGKILL one node: no goodbye, its queue stays in its spool."""
        node = self.nodes[index]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def restart(self, index: int) -> None:
        self.nodes[index].start(timeout=90)

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()

    def queued(self, index: int) -> int:
        """Messages in one node's spool right now."""
        return len(list(self.nodes[index].config.spool.glob("w[0-9]*/*.msg")))
